"""The lesson pipeline: jupytext sources in ``lessons/`` become executed notebooks on the site.

A lesson is a py:percent file ``lessons/NN_name.py``. :func:`execute_lesson` turns it into a
notebook (jupytext), runs every cell in a fresh Jupyter kernel (nbclient; the ``python3`` kernel,
which is the interpreter that runs this code, so the project's virtual environment), and writes
``docs/lessons/NN_name.ipynb``. The notebook's metadata is stamped with a hash of everything its
outputs depend on: the lesson source, the package sources (``reference/``, ``kernels/``,
``simdist/``) and the benchmark results it may plot (``docs/benchmarks/*.json``).
:func:`ensure_executed` reuses a notebook whose stamp matches and runs the others.

Registered as an mkdocs hook (``hooks:`` in ``mkdocs.yml``), the module

* runs :func:`ensure_executed` for every lesson before the build (``on_config``), so
  ``mkdocs build`` always shows every lesson executed against the current code;
* appends every lesson, in order, to the *Lessons* section of the nav, so a new
  ``lessons/NN_name.py`` appears on the site without editing ``mkdocs.yml``;
* adds a line with the notebook download and the source path to each lesson page;
* removes the MathJax ``<script>`` that nbconvert's template puts on notebook pages (it would load
  from a CDN; the site renders all math with the vendored KaTeX instead).

Kernels in the lessons run on the CPU in Triton's interpreter when there is no CUDA GPU: the kernel
process gets ``TRITON_INTERPRET=1`` then (unless the environment already sets it).

From the command line: ``python docs/hooks/lessons.py [--force] [lessons/NN_name.py ...]``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LESSONS_DIR = ROOT / "lessons"
NOTEBOOK_DIR = ROOT / "docs" / "lessons"
#: Files whose change makes every executed lesson stale (globs relative to the repository root).
DEPENDENCIES = ("reference/**/*.py", "kernels/**/*.py", "simdist/**/*.py", "docs/benchmarks/*.json")
#: Bump when the way lessons are executed changes (kernel environment, metadata layout).
PIPELINE_VERSION = "2"
#: Seconds one cell may run before the lesson fails (override with ATLAS_CELL_TIMEOUT).
CELL_TIMEOUT = int(os.environ.get("ATLAS_CELL_TIMEOUT", "120"))
METADATA_KEY = "attention_atlas"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
_LESSON_NAME = re.compile(r"^\d\d_[A-Za-z0-9_]+\.py$")


class LessonError(RuntimeError):
    """A lesson failed to execute; the message names the lesson file and the failing cell."""


@dataclasses.dataclass
class ExecutedLesson:
    source: Path  #: ``lessons/NN_name.py``
    notebook: Path  #: ``docs/lessons/NN_name.ipynb``
    seconds: float  #: wall-clock time of the execution (kernel start included); 0 when reused
    executed: bool  #: False when an up-to-date notebook was reused


# --------------------------------------------------------------------------------------------
# Finding lessons and their stamps
# --------------------------------------------------------------------------------------------


def lesson_sources(lessons_dir: Path | None = None) -> list[Path]:
    """Every ``lessons/NN_name.py``, in lesson order."""
    folder = Path(lessons_dir) if lessons_dir is not None else LESSONS_DIR
    return sorted(p for p in folder.glob("*.py") if _LESSON_NAME.match(p.name))


def notebook_path(source: Path) -> Path:
    """Where the executed notebook of ``source`` is written: ``docs/lessons/NN_name.ipynb``."""
    return NOTEBOOK_DIR / (Path(source).stem + ".ipynb")


def source_hash(source: Path) -> str:
    """SHA-256 of the lesson source, the package sources and the benchmark JSON it may read."""
    h = hashlib.sha256(f"pipeline {PIPELINE_VERSION}\n".encode())
    files = {Path(source).resolve()}
    for pattern in DEPENDENCIES:
        files.update(p.resolve() for p in ROOT.glob(pattern) if p.is_file())
    for path in sorted(files):
        try:
            name = path.relative_to(ROOT).as_posix()
        except ValueError:
            name = path.as_posix()
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def stamp_of(notebook: Path) -> dict | None:
    """The pipeline's metadata in an executed notebook, or ``None`` (missing or unreadable)."""
    try:
        nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
        return nb["metadata"][METADATA_KEY]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_up_to_date(source: Path) -> bool:
    """Whether ``docs/lessons/NN_name.ipynb`` was executed from exactly the current sources."""
    stamp = stamp_of(notebook_path(source))
    return bool(stamp) and stamp.get("hash") == source_hash(source)


def lesson_title(source: Path) -> str:
    """The first Markdown ``# heading`` of the lesson (the page title), else a name from the file."""
    text = Path(source).read_text(encoding="utf-8")
    in_markdown = False
    for line in text.splitlines():
        if line.startswith("# %%"):
            in_markdown = "[markdown]" in line
        elif in_markdown and line.startswith("# # "):
            return line[4:].strip()
    return Path(source).stem[3:].replace("_", " ").capitalize()


# --------------------------------------------------------------------------------------------
# Executing
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def kernel_environment() -> dict[str, str]:
    """The environment of the kernel process: the package importable, the interpreter without a GPU."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # figures must land in the notebook, whatever backend the calling environment prefers
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # silence the debugger's frozen-modules note
    if "TRITON_INTERPRET" not in env and not _has_cuda():
        env["TRITON_INTERPRET"] = "1"
    return env


def _cell_lines(source: Path, n_cells: int) -> list[int | None]:
    """The line of ``source`` where each notebook cell starts (``# %%`` markers), when they line up."""
    markers = [i + 1 for i, line in enumerate(Path(source).read_text(encoding="utf-8").splitlines()) if line.startswith("# %%")]
    if len(markers) == n_cells:
        return list(markers)
    if len(markers) == n_cells - 1:  # code before the first marker forms a cell of its own
        return [None, *markers]
    return [None] * n_cells


def _describe_failure(source: Path, nb, err: Exception) -> str:
    rel = _relative(source)
    lines = _cell_lines(source, len(nb.cells))

    def where(index: int, cell) -> str:
        first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
        return f"cell {index}" + (f" (line {lines[index]})" if lines[index] else "") + f" `{first}`"

    for index, cell in enumerate(nb.cells):
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            e = errors[0]
            return f"{rel}: {where(index, cell)} raised {e.get('ename')}: {e.get('evalue')}\n\n{err}"
    # a timeout or a dead kernel leaves no error output: nbclient quotes the cell's source instead
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.source.strip() and cell.source.strip()[:60] in str(err):
            return f"{rel}: {where(index, cell)} failed: {err}"
    return f"{rel}: execution failed: {err}"


def _relative(path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _kernel_manager_class():
    from jupyter_client.manager import AsyncKernelManager

    class QuietShutdownKernelManager(AsyncKernelManager):
        """Shuts the kernel down without interrupting it first.

        jupyter_client interrupts a kernel before asking it to shut down, and ipykernel passes the
        interrupt (SIGINT) to its whole process group: child processes a lesson started (simdist's
        rank processes) would die printing KeyboardInterrupt tracebacks. When the pipeline shuts a
        kernel down every cell has finished, so there is nothing to interrupt. (Interrupting a cell
        that ran past its timeout is unaffected.)
        """

        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return QuietShutdownKernelManager


def execute_lesson(source: Path, *, timeout: int = CELL_TIMEOUT, cwd: Path = ROOT) -> ExecutedLesson:
    """Execute ``source`` fresh and write ``docs/lessons/NN_name.ipynb`` with its stamp.

    Args:
        source: a ``lessons/NN_name.py`` jupytext py:percent file.
        timeout: seconds any one cell may run.
        cwd: the kernel's working directory (the repository root, so ``import reference`` works and
            relative paths such as ``docs/benchmarks/...`` resolve).

    Raises:
        LessonError: a cell raised (or timed out); the message names the file, the cell, its line
            and the exception. Nothing is written then, so a stale notebook is never mistaken
            for a passing one.
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    source = Path(source).resolve()
    digest = source_hash(source)
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.setdefault("language_info", {"name": "python"})
    nb.metadata.pop("jupytext", None)
    _KernelManager = _kernel_manager_class()
    start = time.perf_counter()
    # IPC sockets in a private directory: no TCP port, and no warning about unencrypted TCP.
    with tempfile.TemporaryDirectory(prefix="atlas-kernel-") as sockets:
        km = _KernelManager(kernel_name=KERNELSPEC["name"], transport="ipc", ip=os.path.join(sockets, "kernel"))
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            allow_errors=False,
            record_timing=False,
            # one output per stream and cell, carriage returns applied: a progress bar's updates
            # collapse to its final line, as a terminal would show it
            coalesce_streams=True,
            resources={"metadata": {"path": str(cwd)}},
        )
        try:
            client.execute(env=kernel_environment(), cleanup_kc=True)  # we made km: shut the kernel down
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
            raise LessonError(_describe_failure(source, nb, err)) from None
    seconds = time.perf_counter() - start
    nb.metadata[METADATA_KEY] = {
        "hash": digest,
        "source": _relative(source),
        "seconds": round(seconds, 2),
        "triton_interpret": kernel_environment().get("TRITON_INTERPRET", "0"),
    }
    target = notebook_path(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".ipynb.tmp")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, target)
    return ExecutedLesson(source, target, seconds, True)


def ensure_executed(source: Path, *, force: bool = False) -> ExecutedLesson:
    """Reuse ``docs/lessons/NN_name.ipynb`` when its stamp matches the sources, else execute."""
    source = Path(source).resolve()
    if not force and is_up_to_date(source):
        return ExecutedLesson(source, notebook_path(source), 0.0, False)
    return execute_lesson(source)


def remove_orphans() -> list[Path]:
    """Delete executed notebooks whose lesson source no longer exists."""
    wanted = {notebook_path(s).name for s in lesson_sources()}
    removed = []
    for nb in NOTEBOOK_DIR.glob("*.ipynb"):
        if nb.name not in wanted:
            nb.unlink()
            removed.append(nb)
    return removed


# --------------------------------------------------------------------------------------------
# mkdocs hook
# --------------------------------------------------------------------------------------------

_LESSON_PAGES: dict[str, Path] = {}  # docs-relative notebook path -> lesson source
_NAV_SECTION = "Lessons"


def _log():
    import logging

    return logging.getLogger("mkdocs.hooks.lessons")


def on_config(config):
    """Execute stale lessons, then list every lesson in the nav's *Lessons* section."""
    from mkdocs.exceptions import PluginError

    log = _log()
    remove_orphans()
    _LESSON_PAGES.clear()
    entries = []
    for source in lesson_sources():
        try:
            done = ensure_executed(source)
        except LessonError as err:
            raise PluginError(f"lesson failed: {err}") from None
        if done.executed:
            log.info("executed %s in %.1f s", _relative(source), done.seconds)
        else:
            log.debug("reused %s (up to date)", _relative(done.notebook))
        rel = done.notebook.relative_to(ROOT / "docs").as_posix()
        _LESSON_PAGES[rel] = source
        entries.append({lesson_title(source): rel})
    nav = config.get("nav")
    if nav is not None:
        for item in nav:
            if isinstance(item, dict) and _NAV_SECTION in item:
                section = item[_NAV_SECTION]
                if not isinstance(section, list):
                    section = [section]
                item[_NAV_SECTION] = [e for e in section if not _is_lesson_entry(e)] + entries
                break
        else:
            nav.append({_NAV_SECTION: entries})
    return config


def _is_lesson_entry(entry) -> bool:
    values = entry.values() if isinstance(entry, dict) else [entry]
    return any(isinstance(v, str) and v.startswith("lessons/") and v.endswith(".ipynb") for v in values)


def on_page_markdown(markdown, page, config, files):
    """Fill ``<!-- lessons-table -->`` on an ordinary page with a table of every lesson."""
    marker = "<!-- lessons-table -->"
    if marker not in markdown:
        return markdown
    rows = ["| # | lesson | source |", "| --- | --- | --- |"]
    here = Path(page.file.src_uri).parent
    for rel, source in _LESSON_PAGES.items():
        link = os.path.relpath(rel, here).replace(os.sep, "/")
        rows.append(f"| {source.name[:2]} | [{lesson_title(source)}]({link}) | `lessons/{source.name}` |")
    return markdown.replace(marker, "\n".join(rows))


def on_page_content(html, page, config, files):
    """Prepend the notebook download and the source path to each lesson page."""
    source = _LESSON_PAGES.get(page.file.src_uri)
    if source is None:
        return html
    stamp = stamp_of(notebook_path(source)) or {}
    seconds = stamp.get("seconds")
    ran = f" Executed in {seconds:.0f} s when the site was built." if isinstance(seconds, (int, float)) else ""
    note = (
        '<p class="atlas-lesson-source">'
        f'Source: <code>lessons/{source.name}</code> (a jupytext notebook: open it in JupyterLab with '
        f'<code>make lab</code>) · <a href="{notebook_path(source).name}" download>download the executed '
        f"notebook</a>.{ran}</p>"
    )
    return note + html


# nbconvert's template loads MathJax from a CDN on every notebook page, and Mermaid from a CDN on
# pages with a Mermaid diagram. The site renders math with the vendored KaTeX and the lessons draw
# no Mermaid diagrams, so both loaders are cut out: nothing may be fetched from outside the site.
_CDN_LOADERS = (
    re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", flags=re.DOTALL),
    re.compile(
        r'<script type="module">(?:(?!</script>).)*?jp-Mermaid.*?<!-- End of mermaid configuration -->',
        flags=re.DOTALL,
    ),
)
# Links between lessons are written for JupyterLab ("02_linear_attention.py", "../docs/gla.md");
# on the site they must point at the rendered pages.
_LESSON_LINK = re.compile(r'href="(?:\./)?(\d\d_[A-Za-z0-9_]+)\.py(#[^"]*)?"')
_DOCS_LINK = re.compile(r'href="\.\./docs/([A-Za-z0-9_/]+?)\.md(#[^"]*)?"')


def _docs_href(m) -> str:
    page, anchor = m.group(1), m.group(2) or ""
    page = "" if page == "index" else page.removesuffix("/index") + "/"
    return f'href="../../{page}{anchor}"'  # a lesson page is lessons/NN_name/index.html


def on_post_page(output, page, config):
    """On lesson pages: cut nbconvert's CDN loaders out and point lesson links at the site's pages."""
    if page.file.src_uri not in _LESSON_PAGES:
        return output
    for pattern in _CDN_LOADERS:
        output = pattern.sub("", output)
    known = {Path(rel).stem for rel in _LESSON_PAGES}

    def lesson_link(m):
        stem, anchor = m.group(1), m.group(2) or ""
        if stem not in known:
            return m.group(0)
        return f'href="../{stem}/{anchor}"'

    output = _LESSON_LINK.sub(lesson_link, output)
    output = _DOCS_LINK.sub(_docs_href, output)
    return output


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Execute the lessons into docs/lessons/*.ipynb.")
    parser.add_argument("lessons", nargs="*", type=Path, help="lesson files (default: all)")
    parser.add_argument("--force", action="store_true", help="execute even when up to date")
    args = parser.parse_args(argv)
    for source in args.lessons or lesson_sources():
        try:
            done = ensure_executed(source, force=args.force)
        except LessonError as err:
            print(err, file=sys.stderr)
            return 1
        state = f"executed in {done.seconds:.1f} s" if done.executed else "up to date"
        print(f"{_relative(done.notebook)}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
