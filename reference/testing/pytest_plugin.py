"""The grader as a pytest plugin: one test item per property, for instructors who prefer pytest.

    pytest -p reference.testing.pytest_plugin --grade lightning student.py

Each ``.py`` file named on the command line becomes a collector of the ``lightning`` suite's
properties, run against that file's functions (loaded in isolation, as the command line
``python -m reference.testing`` loads them). A property whose functions the file does not define
is skipped, saying which; a stub raising ``NotImplementedError`` fails as *not implemented*.
Options: ``--grade-backend numpy|torch``, ``--grade-max-examples N`` (derandomised under ``CI``,
like the command line). The report of a failure is the grader's: which form disagreed with which,
by how much, and the counterexample.
"""

from __future__ import annotations

import pytest

from reference.testing import grader, suites
from reference.testing.checks import Target
from reference.testing.suites._base import using


def pytest_addoption(parser):
    group = parser.getgroup("reference.testing", "grading with attention-atlas's property suites")
    group.addoption("--grade", metavar="ALGORITHM", choices=list(suites.SUITES),
                    help="grade the .py files named on the command line against this algorithm's suite")  # fmt: skip
    group.addoption("--grade-backend", choices=["numpy", "torch"], default=None,
                    help="feed the graded functions NumPy arrays (default) or torch tensors")  # fmt: skip
    group.addoption("--grade-max-examples", type=int, default=None, metavar="N",
                    help=f"Hypothesis examples per property (default {grader.DEFAULT_EXAMPLES})")  # fmt: skip


def pytest_collect_file(file_path, parent):
    config = parent.config
    algorithm = config.getoption("grade")
    if algorithm and file_path.suffix == ".py" and parent.session.isinitpath(file_path):
        return GradedFile.from_parent(parent, path=file_path, algorithm=algorithm)
    return None


class GradedFile(pytest.File):
    def __init__(self, *, algorithm: str, **kwargs):
        super().__init__(**kwargs)
        self.algorithm = algorithm

    def collect(self):
        suite = suites.load(self.algorithm)
        module = grader.load_target(str(self.path))
        impl = Target(module, backend=self.config.getoption("grade_backend"), name=self.path.name)
        guarded = grader._Guarded(impl, suites.contract(suite))
        for prop in suite.PROPERTIES:
            item = GradedProperty.from_parent(self, name=f"{self.algorithm}::{prop.name}", prop=prop, impl=guarded)
            if not prop.applies_to(impl):
                lacking = prop.missing(impl)
                reason = f"{self.path.name} does not define {', '.join(lacking)}" if lacking else (
                    f"needs the {' or '.join(prop.backends)} backend (--grade-backend {prop.backends[0]})"
                )  # fmt: skip
                item.add_marker(pytest.mark.skip(reason=reason))
            yield item


class GradedProperty(pytest.Item):
    def __init__(self, *, prop, impl, **kwargs):
        super().__init__(**kwargs)
        self.prop = prop
        self.impl = impl

    def runtest(self):
        chosen = grader.grading_settings(self.config.getoption("grade_max_examples"))
        try:
            with using(chosen):
                self.prop.check(self.impl)
        except grader._Unimplemented as err:
            pytest.fail(f"not implemented: {err}", pytrace=False)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, pytest.fail.Exception):
            return str(excinfo.value)
        return f"{self.prop.doc}\n\n{grader._describe_failure(excinfo.value)}"

    def reportinfo(self):
        return self.path, 0, self.name
