"""The grader catches every known mistake, passes correct code, and reports readably.

* every mutant in ``tests/mutants/`` (one wrong implementation each, see its README) fails, and a
  property it names in ``CAUGHT_BY`` is among those that fail; the mutation score is printed and
  must be 100 %;
* the reference (every algorithm) and a correct Lightning written independently of the package
  (``tests/student_lightning.py``) pass;
* the exercises' stubs are reported as *not implemented*, not as crashes;
* the command line runs for real once on a mutant and once on the control: exit status, the
  readable counterexample, and the Gradescope ``results.json``.

Few examples per property: each suite tries its explicit example (a strong decay, an odd length,
several chunks) first, which is where these mistakes show.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reference.testing import grader, suites

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = sorted((ROOT / "tests" / "mutants").glob("*.py"))
EXERCISES = sorted((ROOT / "lessons" / "exercises").glob("*.py"))
STUDENT = ROOT / "tests" / "student_lightning.py"
REFERENCES = {
    "softmax": "reference.softmax_attention",
    "linear": "reference.linear_attention",
    "lightning": "reference.lightning",
    "gla": "reference.gla",
}
EXAMPLES = 3  # the explicit example catches every mutant; a couple more for the random draws


def _available(algorithm: str) -> bool:
    try:
        suites.load(algorithm)
    except suites.SuiteUnavailable:
        return False
    return True


@pytest.mark.filterwarnings("ignore:reduction:UserWarning")  # the KLDivLoss-mean mutant's own warning
def test_every_mutant_is_caught_by_a_property_it_names():
    """The mutation score: every mutant fails, on (at least) a property of its ``CAUGHT_BY``.

    Only the named properties run (a mutant may define every contract function, and the others
    would pass); the command-line test below runs a whole suite on one.
    """
    assert len(MUTANTS) >= 12
    caught, missed, skipped = [], [], []
    for path in MUTANTS:
        module = grader.load_target(str(path))
        first_line = (module.__doc__ or "").strip().splitlines()[0]
        assert first_line.startswith("Mutant: "), f"{path.name}: the docstring's first line must say 'Mutant: ...'"
        assert module.CAUGHT_BY, f"{path.name}: CAUGHT_BY names no property"
        if not _available(module.ALGORITHM):
            skipped.append(path.name)
            continue
        names = {p.name for p in suites.load(module.ALGORITHM).PROPERTIES}
        assert set(module.CAUGHT_BY) <= names, f"{path.name}: CAUGHT_BY names unknown properties {set(module.CAUGHT_BY) - names}"
        report = grader.grade(
            module.ALGORITHM, module, max_examples=EXAMPLES, derandomize=True, only=module.CAUGHT_BY, target_name=path.name
        )
        failed = {o.name for o in report.failed}
        hit = sorted(failed & set(module.CAUGHT_BY))
        (caught if hit and not report.ok else missed).append((path.name, hit or sorted(failed)))
    total = len(caught) + len(missed)
    print(f"\nmutation score: {len(caught)}/{total} = {100 * len(caught) / total:.0f} %")
    for name, hit in caught:
        print(f"  caught  {name:<50} by {', '.join(hit)}")
    for name, failed in missed:
        print(f"  MISSED  {name:<50} (failed: {', '.join(failed) or 'nothing'})")
    for name in skipped:
        print(f"  skipped {name:<50} (its suite is not installed yet)")
    assert not missed, f"mutants not caught by a property they name: {missed}"


@pytest.mark.parametrize("algorithm", list(REFERENCES))
def test_the_reference_passes(algorithm):
    module = grader.load_target(REFERENCES[algorithm])
    report = grader.grade(algorithm, module, max_examples=EXAMPLES, derandomize=True)
    assert report.ok, report.text()
    assert report.missing == (("attention",) if algorithm == "softmax" else ())  # simdist's, on ranks


def test_an_independent_correct_implementation_passes():
    """``tests/student_lightning.py`` imports nothing of the package: the suite accepts any correct code."""
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(STUDENT.read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported == {"numpy"}, imported
    report = grader.grade("lightning", grader.load_target(str(STUDENT)), max_examples=10, derandomize=True)
    assert report.ok, report.text()
    numpy_properties = [p for p in suites.load("lightning").PROPERTIES if "numpy" in p.backends]
    assert len(report.outcomes) == len(numpy_properties) >= 13 and not report.missing


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.stem)
def test_exercise_stubs_are_reported_as_not_implemented(path):
    module = grader.load_target(str(path))
    algorithm = (module.__doc__ or "").split("python -m reference.testing ")[1].split()[0]
    if not _available(algorithm):
        pytest.skip(f"the {algorithm} suite is not installed yet")
    report = grader.grade(algorithm, module, max_examples=EXAMPLES)
    assert report.outcomes, report.text()
    assert {o.status for o in report.outcomes} == {"not implemented"}, report.text()
    assert not report.ok and "not implemented" in report.text()


def test_the_report_and_its_gradescope_json():
    module = grader.load_target(str(ROOT / "tests" / "mutants" / "lightning_last_chunk_dropped.py"))
    report = grader.grade("lightning", module, max_examples=EXAMPLES, derandomize=True, target_name="student.py")
    text = report.text()
    assert "not defined: recurrent, parallel, chunked_backward, decay_mask" in text
    assert "FAILED  chunked_handles_a_short_last_chunk" in text
    assert "has shape (1, 2, 6, 3), expected (1, 2, 7, 3)" in text  # which quantity, how it differs
    assert "case: Case(B=1, H=2, T=7" in text  # the inputs, replayable from their seed
    assert "chunked_equals_recurrent" in text and "needs recurrent" in text
    data = json.loads(json.dumps(report.gradescope()))
    assert {"score", "tests", "output"} <= data.keys()
    assert data["score"] == sum(t["score"] for t in data["tests"]) < len(data["tests"])
    for t in data["tests"]:
        assert {"name", "score", "max_score", "status", "output"} <= t.keys()
        assert t["status"] in ("passed", "failed")


def test_a_target_defining_nothing_fails():
    report = grader.grade("linear", object(), max_examples=EXAMPLES)
    assert not report.ok and not report.outcomes
    assert report.missing == ("recurrent", "parallel", "chunked")
    assert "no property ran" in report.text()


def test_required_functions_and_unknown_suites(monkeypatch):
    module = grader.load_target(str(ROOT / "tests" / "mutants" / "softmax_default_scale_dropped.py"))
    report = grader.grade("softmax", module, max_examples=1, require=("tiled",), only=())
    assert report.required_missing == ("tiled",) and not report.ok
    assert any(t["name"] == "softmax: tiled is defined" for t in report.gradescope()["tests"])
    with pytest.raises(ValueError, match="algorithm must be one of"):
        grader.grade("flash", module)
    monkeypatch.setitem(suites.SUITES, "later", "reference.testing.suites.not_written_yet")
    with pytest.raises(suites.SuiteUnavailable, match="not available yet"):
        suites.load("later")


def _cli(*args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    return subprocess.run(
        [sys.executable, "-m", "reference.testing", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_command_line_on_a_mutant_and_on_a_correct_implementation(tmp_path):
    """Run from another directory, as an installed tool: a file path in, exit status and JSON out."""
    out = tmp_path / "results.json"
    bad = _cli("lightning", str(ROOT / "tests" / "mutants" / "lightning_off_by_one_lambda_inter.py"),
               "--max-examples", "2", "--json", str(out), tmp_path=tmp_path)  # fmt: skip
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAILED  chunked_equals_the_oracle" in bad.stdout
    assert "chunked vs the float64 oracle: o differs by" in bad.stdout and "Failing explicit example" in bad.stdout
    assert "derandomised" in bad.stdout  # CI is set
    data = json.loads(out.read_text())
    assert any(t["status"] == "failed" and t["name"] == "lightning: chunked_equals_the_oracle" for t in data["tests"])

    good = _cli("lightning", str(STUDENT), "--max-examples", "3", "--json", str(out), tmp_path=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    data = json.loads(out.read_text())
    assert data["score"] == len(data["tests"]) >= 13 and data["extra_data"]["passed"]
    assert not list(tmp_path.glob(".hypothesis"))  # the grader writes no example database



def test_the_command_line_on_a_file_that_does_not_load(tmp_path, capsys):
    from reference.testing.__main__ import main

    out = tmp_path / "results.json"
    assert main(["lightning", str(tmp_path / "nope.py"), "--json", str(out)]) == 1
    assert "could not load" in capsys.readouterr().err
    assert json.loads(out.read_text())["tests"][0]["status"] == "failed"
    (tmp_path / "broken.py").write_text("def chunked(:\n")
    assert main(["lightning", str(tmp_path / "broken.py")]) == 1
    assert "SyntaxError" in capsys.readouterr().err


def test_the_pytest_plugin(tmp_path):
    """``pytest -p reference.testing.pytest_plugin --grade lightning FILE``: one item per property."""
    (tmp_path / "wrong.py").write_text((ROOT / "tests" / "mutants" / "lightning_off_by_one_lambda_inter.py").read_text())
    (tmp_path / "right.py").write_text(STUDENT.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "reference.testing.pytest_plugin", "--grade", "lightning",
         "--grade-max-examples", "2", "-p", "no:cacheprovider", "-q", "-rfs", "wrong.py", "right.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "FAILED wrong.py::lightning::chunked_equals_the_oracle" in out
    assert "chunked vs the float64 oracle: o differs by" in out
    assert "wrong.py does not define recurrent" in out  # skipped, saying why
    assert "FAILED right.py" not in out  # the control passes
    failed = {line.split("::")[-1].split()[0] for line in out.splitlines() if line.startswith("FAILED")}
    assert {"chunked_equals_the_oracle", "chunked_handles_a_short_last_chunk"} <= failed


def test_an_exception_in_the_target_is_reported_with_its_lines(tmp_path):
    """Not an assertion: the report gives the exception and the target's own lines it passed through."""
    (tmp_path / "crashes.py").write_text(
        "def tiled(q, k, v, *, causal=True, scale=None, block_q=64, block_k=64):\n"
        "    blocks = 0\n"
        "    return q.shape[2] // blocks\n"
    )
    report = grader.grade("softmax", grader.load_target(str(tmp_path / "crashes.py")), max_examples=1, only=("tiled_equals_the_oracle",))
    (outcome,) = report.outcomes
    assert outcome.status == "failed"
    assert outcome.output.startswith("raised ZeroDivisionError: integer division or modulo by zero")
    assert 'crashes.py", line 3, in tiled' in outcome.output and "checks.py" not in outcome.output


def test_skipped_properties_are_listed_as_not_run():
    report = grader.grade("linear", grader.load_target("reference.linear_attention"), max_examples=1,
                          skip=("chunked_equals_the_oracle",), only=("chunked_equals_the_oracle", "chunked_rejects_bad_inputs"))  # fmt: skip
    assert [o.name for o in report.outcomes] == ["chunked_rejects_bad_inputs"] and report.ok
    assert ("chunked_equals_the_oracle", "skipped (--skip)") in report.not_run
