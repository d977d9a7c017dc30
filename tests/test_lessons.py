"""Every lesson executes from scratch, fast, and shows a figure; the lesson pipeline keeps its promises.

``test_lesson_executes`` is parametrised over ``lessons/NN_*.py`` as found at collection time, so a
new lesson is tested without editing this file. It executes the lesson fresh in a Jupyter kernel
(the pipeline of ``docs/hooks/lessons.py``: jupytext, then nbclient, errors fatal) and writes the
executed notebook to ``docs/lessons/`` with its stamp, so the site build later in the same run
(``tests/test_site.py``) reuses it instead of executing it again.

Without a CUDA GPU the kernel process gets ``TRITON_INTERPRET=1`` (``tests/conftest.py`` sets it
for the session, and the pipeline sets it for the kernel in any case), so lessons that call the
Triton kernels run them in the interpreter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 60.0


from tests.lesson_pipeline import lessons  # noqa: E402  (docs/hooks/lessons.py, loaded by path)
LESSONS = lessons.lesson_sources()


def _figures(notebook: Path) -> int:
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    return sum(
        1
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
        if any(mime.startswith("image/") for mime in out.get("data", {}))
    )


@pytest.mark.parametrize("source", LESSONS, ids=[s.stem for s in LESSONS])
def test_lesson_executes(source):
    try:
        done = lessons.execute_lesson(source)
    except lessons.LessonError as err:
        pytest.fail(str(err), pytrace=False)
    assert done.executed and done.notebook.is_file()
    assert done.seconds < TIME_LIMIT_S, f"{source.name} took {done.seconds:.1f} s (limit {TIME_LIMIT_S:.0f} s on 2 cores)"
    assert _figures(done.notebook) >= 1, f"{source.name} draws no figure"
    # the stamp matches, so the site build reuses this notebook instead of running the lesson again
    assert lessons.is_up_to_date(source)
    assert not lessons.ensure_executed(source).executed


def test_there_are_lessons():
    assert [s.name[:2] for s in LESSONS][:2] == ["01", "02"], [s.name for s in LESSONS]
    numbers = [int(s.name[:2]) for s in LESSONS]
    assert numbers == sorted(set(numbers)), f"lesson numbers repeat: {[s.name for s in LESSONS]}"


# --------------------------------------------------------------------------------------------
# The pipeline itself, on a throw-away tree
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A miniature repository: the pipeline's ROOT, lessons/ and docs/lessons/ point into tmp_path."""
    (tmp_path / "lessons").mkdir()
    (tmp_path / "reference").mkdir()
    (tmp_path / "docs" / "benchmarks").mkdir(parents=True)
    (tmp_path / "reference" / "algo.py").write_text("X = 1\n")
    monkeypatch.setattr(lessons, "ROOT", tmp_path)
    monkeypatch.setattr(lessons, "LESSONS_DIR", tmp_path / "lessons")
    monkeypatch.setattr(lessons, "NOTEBOOK_DIR", tmp_path / "docs" / "lessons")
    return tmp_path


def test_stamp_covers_the_lesson_the_packages_and_the_benchmarks(sandbox):
    source = sandbox / "lessons" / "01_demo.py"
    source.write_text("# %%\nx = 1\n")
    first = lessons.source_hash(source)
    assert lessons.source_hash(source) == first  # deterministic
    (sandbox / "README.md").write_text("unrelated\n")
    assert lessons.source_hash(source) == first
    for path, text in [
        (source, "# %%\nx = 2\n"),
        (sandbox / "reference" / "algo.py", "X = 2\n"),
        (sandbox / "docs" / "benchmarks" / "lightning.json", "{}"),
    ]:
        before = lessons.source_hash(source)
        path.write_text(text)
        assert lessons.source_hash(source) != before, f"changing {path.name} must make the notebook stale"


def test_a_failing_lesson_names_its_cell_and_writes_nothing(sandbox):
    source = sandbox / "lessons" / "07_broken.py"
    source.write_text(
        "# %% [markdown]\n# # A broken lesson\n\n"
        "# %%\nx = 1\n\n"
        "# %%\ny = x / 0\n"
    )
    with pytest.raises(lessons.LessonError) as info:
        lessons.execute_lesson(source, cwd=sandbox)
    message = str(info.value)
    assert "lessons/07_broken.py" in message and "cell 2 (line 7)" in message, message
    assert "ZeroDivisionError" in message and "y = x / 0" in message, message
    assert not lessons.notebook_path(source).exists()


def test_reuse_and_orphans(sandbox):
    source = sandbox / "lessons" / "03_tiny.py"
    source.write_text("# %% [markdown]\n# # Tiny\n\n# %%\nprint(6 * 7)\n")
    assert lessons.lesson_title(source) == "Tiny"
    assert not lessons.is_up_to_date(source)
    done = lessons.ensure_executed(source)
    assert done.executed and lessons.is_up_to_date(source)
    nb = json.loads(done.notebook.read_text())
    assert "".join(nb["cells"][1]["outputs"][0]["text"]) == "42\n"
    assert nb["metadata"]["attention_atlas"]["source"] == "lessons/03_tiny.py"
    assert not lessons.ensure_executed(source).executed  # up to date: reused
    (sandbox / "reference" / "algo.py").write_text("X = 3\n")
    assert not lessons.is_up_to_date(source)  # a package source changed
    stale = lessons.NOTEBOOK_DIR / "09_removed.ipynb"
    stale.write_text("{}")
    assert lessons.remove_orphans() == [stale] and not stale.exists()


def test_the_hook_lists_every_lesson_in_the_nav(sandbox, monkeypatch):
    for name in ["02_b.py", "01_a.py", "10_c.py", "notes.py"]:
        (sandbox / "lessons" / name).write_text(f"# %% [markdown]\n# # Title {name[:2]}\n")
    ran = []

    def fake_ensure(source, *, force=False):
        ran.append(Path(source).name)
        return lessons.ExecutedLesson(Path(source), lessons.notebook_path(source), 0.0, False)

    monkeypatch.setattr(lessons, "ensure_executed", fake_ensure)
    config = {"nav": [{"Home": "index.md"}, {"Lessons": [{"Using the lessons": "lessons.md"}]}, {"Errata": "errata.md"}]}
    lessons.on_config(config)
    assert ran == ["01_a.py", "02_b.py", "10_c.py"]  # lesson order; notes.py is not a lesson
    assert config["nav"][1]["Lessons"] == [
        {"Using the lessons": "lessons.md"},
        {"Title 01": "lessons/01_a.ipynb"},
        {"Title 02": "lessons/02_b.ipynb"},
        {"Title 10": "lessons/10_c.ipynb"},
    ]
    lessons.on_config(config)  # mkdocs serve calls it again on every rebuild: no duplicates
    assert len(config["nav"][1]["Lessons"]) == 4
