"""The grader: run an algorithm's property suite against any implementation and report on each property.

``grade("lightning", impl)`` runs every property whose contract functions ``impl`` defines and
returns a ``Report``: per property *held*, *failed* (the assertion, with Hypothesis's shrunk
counterexample and the blob that replays it) or *not implemented* (the function raised
``NotImplementedError``), plus the contract functions ``impl`` does not define. ``load_target``
imports a student's ``.py`` file (in isolation, under a private module name) or a module by name.
``python -m reference.testing`` is the command line around these two.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from reference.testing import suites
from reference.testing.checks import Target
from reference.testing.suites._base import backend_of, using

__all__ = ["grade", "load_target", "grading_settings", "Report", "Outcome", "DEFAULT_EXAMPLES"]

DEFAULT_EXAMPLES = 50
_HERE = str(Path(__file__).resolve().parent)


@dataclass
class Outcome:
    """One property's result: ``status`` is ``"held"``, ``"failed"`` or ``"not implemented"``."""

    name: str
    status: str
    output: str = ""
    seconds: float = 0.0
    doc: str = ""

    @property
    def held(self) -> bool:
        return self.status == "held"


@dataclass
class Report:
    """What ``grade`` found: the properties run, those not run (and why), the functions not defined."""

    algorithm: str
    target: str
    backend: str
    max_examples: int
    derandomized: bool
    contract: tuple[str, ...]
    missing: tuple[str, ...]
    outcomes: list[Outcome] = field(default_factory=list)
    not_run: list[tuple[str, str]] = field(default_factory=list)
    required_missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Every property run held, at least one ran, and every required function is defined."""
        return bool(self.outcomes) and all(o.held for o in self.outcomes) and not self.required_missing

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.held]

    def text(self) -> str:
        """The report as the command line prints it."""
        mode = "derandomised" if self.derandomized else "random"
        lines = [
            f"grading {self.algorithm} against {self.target} "
            f"(backend {self.backend}; up to {self.max_examples} examples per property, {mode})",
            f"contract: {', '.join(self.contract)}",
            f"not defined: {', '.join(self.missing) if self.missing else '(none)'}",
        ]
        if self.required_missing:
            lines.append(f"REQUIRED but not defined: {', '.join(self.required_missing)}")
        lines.append("")
        width = max((len(o.name) for o in self.outcomes), default=0)
        for o in self.outcomes:
            label = {"held": "held  ", "failed": "FAILED", "not implemented": "TODO  "}[o.status]
            extra = "" if o.status != "not implemented" else "  (not implemented)"
            lines.append(f"  {label}  {o.name.ljust(width)}  {o.seconds:5.1f} s{extra}")
            if not o.held and o.status != "not implemented":
                lines.extend("          " + line for line in o.output.splitlines())
                lines.append("")
        if self.not_run:
            lines.append("")
            lines.append("not run:")
            w = max(len(n) for n, _ in self.not_run)
            lines.extend(f"  {n.ljust(w)}  {why}" for n, why in self.not_run)
        held = sum(o.held for o in self.outcomes)
        lines.append("")
        if not self.outcomes:
            lines.append(f"no property ran: {self.target} defines none of {', '.join(self.contract)}")
        else:
            todo = sum(o.status == "not implemented" for o in self.outcomes)
            failed = len(self.outcomes) - held - todo
            lines.append(
                f"{held} of {len(self.outcomes)} properties held"
                + (f", {failed} failed" if failed else "")
                + (f", {todo} not implemented" if todo else "")
                + (" (PASS)" if self.ok else " (FAIL)")
            )
        return "\n".join(lines)

    def gradescope(self) -> dict:
        """Gradescope's ``results.json`` shape: one test per property run, 1 point each."""
        tests = [
            {
                "name": f"{self.algorithm}: {o.name}",
                "score": 1.0 if o.held else 0.0,
                "max_score": 1.0,
                "status": "passed" if o.held else "failed",
                "output": (o.doc + ("\n\n" + o.output if o.output else "")).strip(),
            }
            for o in self.outcomes
        ]
        tests += [
            {
                "name": f"{self.algorithm}: {fn} is defined",
                "score": 0.0,
                "max_score": 1.0,
                "status": "failed",
                "output": f"{self.target} does not define {fn}, which this assignment requires.",
            }
            for fn in self.required_missing
        ]
        return {
            "score": float(sum(t["score"] for t in tests)),
            "execution_time": round(sum(o.seconds for o in self.outcomes), 2),
            "output": self.text(),
            "tests": tests,
            "extra_data": {
                "algorithm": self.algorithm,
                "target": self.target,
                "backend": self.backend,
                "not_defined": list(self.missing),
                "not_run": [{"name": n, "reason": why} for n, why in self.not_run],
                "passed": self.ok,
            },
        }


def grading_settings(max_examples: int | None = None, derandomize: bool | None = None):
    """The grader's Hypothesis settings: a local ``settings`` object, no profile is loaded or registered.

    Derandomised when ``derandomize`` is true or, by default, when ``CI`` is set; no example
    database (a grader writes nothing into the student's directory); the first failure is reported
    (not every distinct one), with the blob that replays it.
    """
    from hypothesis import HealthCheck, Phase, settings

    if derandomize is None:
        derandomize = bool(os.environ.get("CI"))
    return settings(
        max_examples=DEFAULT_EXAMPLES if max_examples is None else max_examples,
        derandomize=derandomize,
        database=None,
        deadline=None,
        print_blob=True,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        # No "explain" phase: its lines point into the grader's own code, not the student's.
        phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
    )


def load_target(target: str):
    """Import ``target``: a path to a ``.py`` file (loaded under a private name) or a module name.

    A file's own directory is on ``sys.path`` while it loads, so it may import its neighbours.
    """
    path = Path(target)
    if target.endswith(".py") or os.sep in target or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {target}")
        name = "_graded_" + re.sub(r"\W", "_", path.stem)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        parent = str(path.resolve().parent)
        sys.path.insert(0, parent)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            try:
                sys.path.remove(parent)
            except ValueError:
                pass
        return module
    return importlib.import_module(target)


class _Unimplemented(BaseException):
    """A contract function raised ``NotImplementedError``: a ``BaseException`` so that Hypothesis
    stops at once instead of shrinking a stub's failure."""


class _Guarded:
    """``impl`` with its contract functions wrapped to raise ``_Unimplemented`` for a stub."""

    def __init__(self, impl, names):
        self._impl = impl
        self._names = frozenset(names)

    def __getattr__(self, attr):
        value = getattr(self._impl, attr)
        if attr not in self._names or not callable(value):
            return value

        @functools.wraps(value)
        def guarded(*args, **kwargs):
            try:
                return value(*args, **kwargs)
            except NotImplementedError as err:
                raise _Unimplemented(f"{attr} raised NotImplementedError: {err}") from err

        return guarded


def _describe_failure(err: BaseException) -> str:
    notes = [n.strip("\n") for n in getattr(err, "__notes__", [])]
    if isinstance(err, AssertionError):
        head = str(err) or "assertion failed"
    else:
        # Show where in the implementation it happened, without the grader's and Hypothesis's frames.
        frames = [
            f
            for f in traceback.extract_tb(err.__traceback__)
            if not f.filename.startswith(_HERE) and "hypothesis" not in f.filename and "contextlib" not in f.filename
        ]
        where = "".join(traceback.format_list(frames[-3:])).rstrip()
        head = f"raised {type(err).__name__}: {err}" + (f"\n{where}" if where else "")
    return "\n".join([head, *notes])


def _not_implemented(err: BaseException) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, NotImplementedError):
            return True
        if isinstance(err, BaseExceptionGroup):
            return any(_not_implemented(e) for e in err.exceptions)
        err = err.__cause__ or err.__context__
    return False


def grade(
    algorithm: str,
    impl,
    *,
    max_examples: int | None = None,
    derandomize: bool | None = None,
    backend: str | None = None,
    tolerance: float | None = None,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    require: tuple[str, ...] = (),
    target_name: str | None = None,
    progress=None,
) -> Report:
    """Run ``algorithm``'s properties against ``impl`` (a module or any object with contract functions).

    Args:
        algorithm: ``softmax``, ``linear``, ``lightning``, ``gla``, ``lasp`` (and the sparse suites
            once installed).
        impl: the implementation; wrapped in a ``Target`` with ``backend``/``tolerance`` if given.
        max_examples: Hypothesis examples per property (``DEFAULT_EXAMPLES``).
        derandomize: the same examples every run (default: when ``CI`` is set).
        backend: ``"numpy"`` or ``"torch"`` inputs (default: ``impl.BACKEND``, else NumPy).
        tolerance: the relative error accepted against the oracles (default: each property's own).
        only: run only the properties of these names.
        skip: do not run the properties of these names (listed as not run).
        require: contract functions the implementation must define (missing ones fail the report).
        target_name: how the report names ``impl``.
        progress: called with each ``Outcome`` as it finishes (the command line prints them).

    Raises:
        ValueError: an unknown algorithm. ``suites.SuiteUnavailable``: a suite not installed yet.
    """
    from hypothesis.reporting import with_reporter

    suite = suites.load(algorithm)
    if backend is not None or tolerance is not None or not isinstance(impl, Target):
        impl = Target(impl, backend=backend, tolerance=tolerance, name=target_name)
    contract = suites.contract(suite)
    missing = tuple(fn for fn in contract if not callable(getattr(impl, fn, None)))
    unknown = [fn for fn in require if fn not in contract]
    if unknown:
        raise ValueError(f"require: {', '.join(unknown)} not in the {algorithm} contract ({', '.join(contract)})")
    guarded = _Guarded(impl, contract)
    chosen = grading_settings(max_examples, derandomize)
    report = Report(
        algorithm=algorithm,
        target=target_name or getattr(impl, "name", str(impl)),
        backend=backend_of(impl),
        max_examples=chosen.max_examples,
        derandomized=chosen.derandomize,
        contract=contract,
        missing=missing,
        required_missing=tuple(fn for fn in require if fn in missing),
    )
    for p in suite.PROPERTIES:
        if only is not None and p.name not in only:
            continue
        if p.name in skip:
            report.not_run.append((p.name, "skipped (--skip)"))
            continue
        if not p.applies_to(impl):
            lacking = p.missing(impl)
            if lacking:
                why = f"needs {', '.join(lacking)}"
            else:
                why = f"needs the {' or '.join(p.backends)} backend (--backend {p.backends[0]})"
            report.not_run.append((p.name, why))
            continue
        start = time.perf_counter()
        said: list[str] = []  # what Hypothesis reports (how to replay a random failure), kept per property
        try:
            with using(chosen), with_reporter(said.append):
                p.check(guarded)
            outcome = Outcome(p.name, "held", doc=p.doc)
        except _Unimplemented as err:
            outcome = Outcome(p.name, "not implemented", str(err), doc=p.doc)
        except Exception as err:  # noqa: BLE001  (whatever the implementation raises is the finding)
            status = "not implemented" if _not_implemented(err) else "failed"
            output = "\n".join([_describe_failure(err), *(str(x).strip() for x in said)])
            outcome = Outcome(p.name, status, output, doc=p.doc)
        outcome.seconds = time.perf_counter() - start
        report.outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return report
