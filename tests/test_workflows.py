"""The GitHub Actions workflows stay correct: they parse, and what they run exists.

``.github/workflows/ci.yml`` runs ``bash .ci/run`` (which runs ``make test``) on every push and pull
request; ``.github/workflows/pages.yml`` builds the site with every lesson executed (``make site``)
and publishes it to GitHub Pages on pushes to main. Nothing here runs them; this checks that every
``make`` target they call is a target of the Makefile, every file they name exists, the published
folder is the one mkdocs writes, and the Pages job has the permissions deployment needs.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as the boolean True
    if True in data:
        data["on"] = data.pop(True)
    return data


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M)}


def steps(workflow: dict):
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


def commands(workflow: dict) -> list[list[str]]:
    """Every command line of every ``run:`` step, split like a shell would (comments dropped)."""
    out = []
    for _, step in steps(workflow):
        for line in step.get("run", "").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(shlex.split(line))
    return out


def check_commands(workflow: dict) -> list[str]:
    """Problems: a ``make`` target the Makefile lacks, a script or path that does not exist."""
    problems, targets = [], makefile_targets()
    for words in commands(workflow):
        if words[0] == "make":
            named = [w for w in words[1:] if not w.startswith("-") and "=" not in w] or ["test"]
            problems += [f"make {t}: no such Makefile target" for t in named if t not in targets]
        elif words[0] in ("bash", "sh"):
            script = ROOT / words[1]
            if not script.is_file():
                problems.append(f"{' '.join(words)}: {words[1]} does not exist")
        for w in words:
            if re.fullmatch(r"(\.?[\w-]+/)+[\w.-]+", w) and not (ROOT / w).exists():
                problems.append(f"{' '.join(words)}: the path {w} does not exist")
    return problems


@pytest.mark.parametrize("name", ["ci.yml", "pages.yml"])
def test_workflow_parses_and_pins_its_actions(name):
    workflow = load(name)
    assert workflow["name"] and workflow["jobs"], name
    for job_name, step in steps(workflow):
        assert ("run" in step) != ("uses" in step), f"{name}/{job_name}: a step runs a command or uses an action"
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), f"{name}/{job_name}: unpinned {step['uses']}"
    assert check_commands(workflow) == []


def test_ci_runs_the_ci_script_which_runs_make_test():
    workflow = load("ci.yml")
    assert ["bash", ".ci/run"] in commands(workflow)
    assert {"push", "pull_request"} <= set(workflow["on"])
    script = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", script, flags=re.M), ".ci/run must run the README's `make test`"
    assert "test" in makefile_targets()
    assert os.access(ROOT / ".ci" / "run", os.R_OK)


def test_pages_builds_every_lesson_and_deploys_on_push_to_main():
    workflow = load("pages.yml")
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert {"pages": "write", "id-token": "write"}.items() <= workflow["permissions"].items()
    assert any(words[:2] == ["make", "site"] for words in commands(workflow))
    # `make site` is `mkdocs build --strict`, whose hook executes every lesson
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^site:.*\n\t.*mkdocs build --strict", makefile, flags=re.M)
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    assert "hooks/lessons.py" in mkdocs
    site_dir = re.search(r"^site_dir:\s*(\S+)", mkdocs, flags=re.M)
    uploads = [step for _, step in steps(workflow) if step.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert len(uploads) == 1 and uploads[0]["with"]["path"] == (site_dir.group(1) if site_dir else "site")
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert any(step.get("uses", "").startswith("actions/deploy-pages@") for step in deploy["steps"])


def test_the_checker_catches_a_missing_target_and_path():
    bad = {"jobs": {"x": {"steps": [{"run": "make no-such-target\nbash .ci/nothing"}]}}}
    problems = check_commands(bad)
    assert any("no-such-target" in p for p in problems) and any(".ci/nothing" in p for p in problems)
