"""The repository is its own specification: nothing in it names a file the reader does not have.

Every file of the packages, the lessons, the docs and the README is scanned for tokens that
look like relative file paths (``something.py``, ``docs/errata.md``, ``benchmarks/gla.json``, ...).
Each must resolve to a file of the repository — relative to the repository root, to the folder of
the file that names it, or to ``docs/`` (the site's pages link relative to it). Notes that live
outside the repository (an ``ALGORITHMS.md``, a ``DESIGN.md``, a ``shared/`` or ``seeds/`` folder,
a path on some machine) are refused outright, in the tests too.

Not scanned: the benchmarks' raw records (``docs/benchmarks/logs``, the JSONs), which quote the
machines they ran on, and the vendored KaTeX.
"""

from __future__ import annotations

import functools
import re
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCANNED = ["README.md", "Makefile", "mkdocs.yml", "pyproject.toml", ".ci", ".github", "reference", "kernels",
           "simdist", "lessons", "docs", "tests"]  # fmt: skip
SUFFIXES = {".py", ".md", ".yml", ".yaml", ".toml", ".txt", ".css", ".js", ""}
SKIPPED_DIRS = {"__pycache__", "vendor", "logs", ".ipynb_checkpoints"}

#: Files that exist only once something is built, named on purpose.
GENERATED = {
    "docs/lessons/*.ipynb": re.compile(r"(^|/)lessons/\d\d_\w+\.ipynb$"),  # the site build executes lessons
    "site/...": re.compile(r"^site/"),  # mkdocs' output folder
}

#: Names that look like a path but are not one: patterns and the placeholders of instructions.
NOT_PATHS = re.compile(r"[*{}<>]|(?:^|/)NN_|^path/to/|^(?:my_script|train|script|student)\.py$|^results\.json$|^\.\./docs/page\.md$")

#: In code, ``.json`` and ``.png`` names are files the code reads or writes (a benchmark's results, a
#: plot), which exist once it has run; pages and Markdown cite them, and there they must exist.
OUTPUTS_IN_CODE = (".json", ".png")

#: Python's own library: a name there (a corpus of standard-library sources, say) is no citation.
STDLIB = Path(sysconfig.get_paths()["stdlib"])

FORBIDDEN = [
    (re.compile(r"\bALGORITHMS\.md\b"), "a specification outside the repository"),
    (re.compile(r"\bDESIGN\.md\b"), "a design note outside the repository"),
    (re.compile(r"(?<![\w.-])(?:/work|/home/\w+|/root)/"), "a path on some machine"),
    (re.compile(r"(?<![\w/.-])(?:shared|seeds)/"), "a folder outside the repository"),
    (re.compile(r"\bseed summar"), "a summary outside the repository"),
]

PATH_TOKEN = re.compile(
    r"(?<![\w/.\-{$%*])"  # not the tail of a longer token, a URL, a format string or a module path
    r"((?:\.\./|\./)?(?:[\w\-]+/)*[\w\-]+\.(?:py|md|json|png|ipynb|txt|toml|yml|yaml))"
    r"(?![\w/(\-])"  # not a module attribute (``gla.py_thing``), not a call
)


def scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file() and f.suffix in SUFFIXES and not SKIPPED_DIRS.intersection(f.relative_to(ROOT).parts):
                    files.append(f)
    return files


def resolves(token: str, where: Path) -> bool:
    token = token.split("::")[0]
    if any(pattern.search(token) for pattern in GENERATED.values()):
        return True
    # The site's pages link relative to docs/ (a page's ``../`` climbs out of its own URL folder);
    # benchmark artefacts and lessons are named by their base names beside the code that writes them;
    # pyproject.toml's package data is named relative to its package.
    packages = [ROOT / name for name in ("reference", "kernels", "simdist")]
    bases = [ROOT, where.parent, ROOT / "docs", ROOT / "docs" / "benchmarks", ROOT / "lessons", STDLIB, *packages]
    candidates = [base / token for base in bases] + [ROOT / "docs" / token.removeprefix("../")]
    if any(c.exists() for c in candidates):
        return True
    # A bare file name ("``oracles.py`` is reusable") names whichever file of the repository has it.
    return "/" not in token and token in base_names()


@functools.cache
def base_names() -> frozenset[str]:
    return frozenset(f.name for name in SCANNED if (ROOT / name).exists() for f in [ROOT / name, *(ROOT / name).rglob("*")])


def is_url_part(line: str, start: int) -> bool:
    """The token is inside a URL (``https://...``) or a package index address."""
    head = line[:start]
    word_start = max(head.rfind(" "), head.rfind("("), head.rfind("<"), head.rfind('"'), head.rfind("'"))
    return "://" in head[word_start + 1 :]


def missing_paths(path: Path, text: str | None = None) -> list[str]:
    """Problems of one file. Tests only get the forbidden-name check: they name files they create."""
    problems = []
    names_checked = path.relative_to(ROOT).parts[0] != "tests"
    text = path.read_text(errors="replace") if text is None else text
    own = path.relative_to(ROOT).as_posix()
    for lineno, line in enumerate(text.splitlines(), 1):
        for pattern, why in FORBIDDEN:
            if pattern.search(line) and own != "tests/test_self_contained.py":
                problems.append(f"{own}:{lineno}: {why}: {line.strip()[:120]}")
        for match in PATH_TOKEN.finditer(line) if names_checked else ():
            token = match.group(1)
            if NOT_PATHS.search(token) or is_url_part(line, match.start(1)):
                continue
            if path.suffix == ".py" and token.endswith(OUTPUTS_IN_CODE):
                continue
            if not resolves(token, path):
                problems.append(f"{own}:{lineno}: names {token!r}, which is not in the repository")
    return problems


def test_the_scan_sees_the_files_it_should():
    files = {f.relative_to(ROOT).as_posix() for f in scanned_files()}
    for expected in ("README.md", "reference/lightning.py", "kernels/gla.py", "docs/errata.md", "lessons/03_lightning.py"):
        assert expected in files
    assert not any(f.startswith("docs/vendor/") or "/logs/" in f for f in files)


def test_the_scan_catches_what_it_should():
    """The checks themselves: a missing file, a note outside the repository and a machine path are caught."""
    probe = "See `docs/no_such_page.md`, ALGORITHMS.md §2, /work/shared/x, `kernels/gla.py` and `../benchmarks/gla.png`.\n"
    problems = missing_paths(ROOT / "docs" / "probe.md", probe)
    named = [p.split(" names ")[1].split(",")[0] for p in problems if " names " in p]
    assert named == ["'docs/no_such_page.md'", "'ALGORITHMS.md'"], problems
    assert any("a specification outside" in p for p in problems)
    assert any("a path on some machine" in p for p in problems)


@pytest.mark.parametrize("path", scanned_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_named_file_is_in_the_repository(path):
    problems = missing_paths(path)
    assert not problems, "\n".join(problems)
