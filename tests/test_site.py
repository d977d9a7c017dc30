"""The tutorial site: it builds with ``mkdocs build --strict``, and in a real browser every page works.

The build runs once per session (module fixture). Its hook (``docs/hooks/lessons.py``) reuses the
lesson notebooks that ``tests/test_lessons.py`` executed earlier in the same run (their stamps match
the sources); run alone, this module's build executes the lessons itself.

The browser part drives Debian's Chromium (``/usr/bin/chromium``) through Python Playwright, headless,
against the built site served on 127.0.0.1 by a thread. It visits **every** built page once and
records what happened; the tests below then each check one promise of the site:

* no console errors and no uncaught exceptions;
* no request leaves 127.0.0.1 (every other request is recorded and aborted);
* every formula rendered by KaTeX, and no raw ``$...$``, ``\\(`` or ``\\[`` left in the visible text
  (code blocks excepted);
* every ``<img>`` loaded, the lessons' base64 figures included, and every lesson page shows as many
  figures as its executed notebook produced;
* nothing is cut off at 1280 px: content wider than its box (a wide table, a long code line or
  output) scrolls inside a box that fits the column, and the page itself never scrolls sideways;
* every internal link resolves (status 200), fragments included: links inside the notebooks escape
  ``mkdocs --strict``'s checks, so they are crawled here;
* search answers, and the light/dark toggle switches the palette.

Without Chromium or Playwright the browser tests skip and say which is missing
(``apt-get install chromium``; CI's ``.ci/run`` installs it).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("ATLAS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--mute-audio",
]


from tests.lesson_pipeline import lessons  # noqa: E402  (docs/hooks/lessons.py, loaded by path)


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``mkdocs build --strict`` into a temporary directory, once per session."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return out


def _pages(site: Path) -> list[str]:
    """Every built page as a path relative to the site root ('' for the home page)."""
    pages = []
    for index in sorted(site.rglob("index.html")):
        rel = index.parent.relative_to(site).as_posix()
        pages.append("" if rel == "." else rel + "/")
    return pages


def test_strict_build_has_every_page(site):
    pages = set(_pages(site))
    expected = {"", "softmax_attention/", "linear_attention/", "lightning/", "gla/", "sequence_parallel/",
                "benchmarks/", "errata/", "lessons/", "api/", "api/reference/", "api/kernels/", "api/simdist/"}
    assert expected <= pages, f"missing pages: {sorted(expected - pages)}"
    for source in lessons.lesson_sources():
        assert f"lessons/{source.stem}/" in pages, f"{source.name} has no page"
        # the executed notebook is downloadable beside its page
        assert (site / "lessons" / source.stem / f"{source.stem}.ipynb").is_file()
    assert (site / "search" / "search_index.json").is_file()


def test_every_lesson_is_in_the_nav_in_order(site):
    home = (site / "index.html").read_text(encoding="utf-8")
    positions = []
    for source in lessons.lesson_sources():
        href = f'href="lessons/{source.stem}/"'
        assert href in home, f"{source.name} is not in the navigation"
        positions.append(home.index(href))
    assert positions == sorted(positions), "lessons are not listed in order"


def test_lesson_pages_load_nothing_from_a_cdn(site):
    for source in lessons.lesson_sources():
        html = (site / "lessons" / source.stem / "index.html").read_text(encoding="utf-8")
        scripts = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?:[^"]+)"', html)
        assert not scripts, f"{source.name}: external scripts or styles {scripts}"
        assert "mathjax" not in html.lower(), f"{source.name}: nbconvert's MathJax loader is still there"


# --------------------------------------------------------------------------------------------
# The browser
# --------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def server(site):
    """The built site on http://127.0.0.1:<free port>/, served by a thread."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM}: install Debian's (apt-get install chromium) to run the browser test")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Python playwright is not installed (pip install playwright; no browser download is needed)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _is_local(url: str) -> bool:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme in ("data", "blob", "about"):
        return True
    return parsed.hostname == "127.0.0.1"


# Loads every image now (lazy ones too) and waits for each to finish or fail, so that the image
# check sees final states and no request is still in flight when the crawl moves on.
_LOAD_IMAGES = r"""
async () => {
  const images = Array.from(document.images);
  images.forEach(img => { if (img.loading === "lazy") img.loading = "eager"; });
  await Promise.all(images.map(img => img.complete ? null : new Promise(done => {
    img.addEventListener("load", done, { once: true });
    img.addEventListener("error", done, { once: true });
    setTimeout(done, 10000);
  })));
}
"""

# Horizontal clipping: an element whose content is wider than its box, or whose box reaches past the
# content area, is fine only inside a box that scrolls sideways and itself fits the content area.
_CLIPPED_BOXES = r"""
  function clippedBoxes(article) {
    const out = [];
    const extra = document.documentElement.scrollWidth - window.innerWidth;
    if (extra > 1) out.push(`the page scrolls sideways by ${extra}px at ${window.innerWidth}px`);
    // the content area: the article and its side margins, into which mkdocs-material's table
    // scroll boxes deliberately reach (.md-typeset__scrollwrap: margin 0 -0.8rem)
    const column = (document.querySelector(".md-content") || article).getBoundingClientRect();
    const scrolls = el => ["auto", "scroll"].includes(getComputedStyle(el).overflowX);
    const scroller = el => {
      for (let a = el; a && a !== article.parentElement; a = a.parentElement) {
        if (scrolls(a) && a.getBoundingClientRect().right <= column.right + 1) return a;
      }
      return null;
    };
    article.querySelectorAll("pre, table, .jp-OutputArea-output, .jp-RenderedText, .katex-display, img").forEach(el => {
      const box = el.getBoundingClientRect();
      if (box.width === 0 || el.closest(".md-sidebar")) return;
      const overflowing = el.tagName !== "IMG" && el.scrollWidth > el.clientWidth + 1;
      const sticksOut = box.right > column.right + 1;
      if ((overflowing || sticksOut) && !scroller(el)) {
        const text = (el.textContent || el.getAttribute("src") || "").trim().slice(0, 60);
        out.push(`<${el.tagName.toLowerCase()} class="${el.className}"> ${Math.round(el.scrollWidth)}px of content in ${Math.round(el.clientWidth)}px, right edge ${Math.round(box.right)} > column ${Math.round(column.right)}: ${JSON.stringify(text)}`);
      }
    });
    return out;
  }
"""

# Runs in each page once it has loaded and its math has been rendered.
_COLLECT = r"""
() => {
""" + _CLIPPED_BOXES + r"""

  const article = document.querySelector("article") || document.body;
  const clone = article.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, textarea, [hidden], .katex, .highlight, .highlight-ipynb, .clipboard-copy-txt").forEach(e => e.remove());
  const text = clone.textContent;
  return {
    title: document.title,
    mathRendered: document.body.getAttribute("data-math-rendered") === "true",
    katex: article.querySelectorAll(".katex").length,
    katexErrors: Array.from(article.querySelectorAll(".katex-error")).map(e => e.getAttribute("title") || e.textContent),
    arithmatex: article.querySelectorAll(".arithmatex").length,
    unrendered: Array.from(article.querySelectorAll(".arithmatex")).filter(e => !e.querySelector(".katex")).map(e => e.textContent.slice(0, 80)),
    text: text,
    images: Array.from(document.images).map(img => ({
      src: (img.getAttribute("src") || "").slice(0, 60),
      ok: img.complete && img.naturalWidth > 0,
    })),
    figures: Array.from(article.querySelectorAll(".jp-OutputArea-output img")).filter(img => img.complete && img.naturalWidth > 0).length,
    clipped: clippedBoxes(article),
    links: Array.from(document.querySelectorAll("a[href]")).map(a => a.href),
    ids: Array.from(document.querySelectorAll("[id], a[name]")).map(e => e.id || e.getAttribute("name")),
  };
}
"""

# TeX left in the visible text: \( \[ delimiters, $$...$$, or $...$ around something TeX-like.
_RAW_TEX = re.compile(r"\\\(|\\\[|\$\$|\$[^$\s][^$\n]{0,200}?[^$\s\\]\$|\$[^$\s]\$")


@pytest.fixture(scope="module")
def crawl(site, server, browser):
    """Visit every built page once; record console errors, requests, math, images, links and ids."""
    context = browser.new_context(service_workers="block", viewport={"width": 1280, "height": 900})
    external: list[str] = []
    bad_responses: list[str] = []
    console: list[str] = []

    def route(r):
        if _is_local(r.request.url):
            r.continue_()
        else:
            external.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    current = {"url": ""}

    def on_console(m):
        if m.type == "error":
            source = (m.location or {}).get("url") or "?"
            console.append(f"{current['url']}: {m.text} [from {source}]")

    page.on("console", on_console)
    page.on("pageerror", lambda e: console.append(f"{current['url']}: uncaught {e}"))

    def on_response(r):
        if r.status >= 400:
            try:
                origin = r.request.frame.url  # the page that asked, even if the crawl moved on
            except Exception:
                origin = current["url"]
            bad_responses.append(f"{origin}: {r.status} {r.url}")

    page.on("response", on_response)

    visited = {}
    for rel in _pages(site):
        url = server + rel
        current["url"] = url
        page.goto(url, wait_until="load")
        page.wait_for_function("document.body.getAttribute('data-math-rendered') === 'true'", timeout=15_000)
        page.evaluate(_LOAD_IMAGES)
        visited[rel] = page.evaluate(_COLLECT)
    page.close()
    context.close()
    return {"pages": visited, "external": external, "bad_responses": bad_responses, "console": console, "base": server}


def test_no_console_errors(crawl):
    assert not crawl["console"], "console errors:\n" + "\n".join(crawl["console"])


def test_no_request_leaves_localhost(crawl):
    assert not crawl["external"], "requests outside 127.0.0.1 (aborted):\n" + "\n".join(sorted(set(crawl["external"])))


def test_no_failed_responses(crawl):
    assert not crawl["bad_responses"], "responses with an error status:\n" + "\n".join(crawl["bad_responses"])


def test_math_is_rendered(crawl):
    problems = []
    for rel, info in crawl["pages"].items():
        if not info["mathRendered"]:
            problems.append(f"/{rel}: the KaTeX script did not run")
        if info["arithmatex"] and not info["katex"]:
            problems.append(f"/{rel}: {info['arithmatex']} formulas but no KaTeX output")
        problems += [f"/{rel}: unrendered formula {u!r}" for u in info["unrendered"]]
        problems += [f"/{rel}: KaTeX error {e!r}" for e in info["katexErrors"]]
        for m in _RAW_TEX.finditer(info["text"]):
            problems.append(f"/{rel}: raw TeX in the text: {info['text'][max(0, m.start() - 30): m.end() + 30]!r}")
    assert not problems, "\n".join(problems)
    # the pages that teach math do show it (guards against a check that passes on nothing)
    for rel in ["softmax_attention/", "linear_attention/", *[f"lessons/{s.stem}/" for s in lessons.lesson_sources()]]:
        assert crawl["pages"][rel]["katex"] > 0, f"/{rel} shows no rendered formula"


def test_every_image_loads(crawl):
    broken = [f"/{rel}: {img['src']}" for rel, info in crawl["pages"].items() for img in info["images"] if not img["ok"]]
    assert not broken, "images that did not load:\n" + "\n".join(broken)


def _notebook_figures(notebook: Path) -> int:
    """Image outputs of an executed notebook: what its page must show."""
    import json

    nb = json.loads(notebook.read_text(encoding="utf-8"))
    outputs = [out for cell in nb["cells"] if cell["cell_type"] == "code" for out in cell.get("outputs", [])]
    return sum(1 for out in outputs if any(mime.startswith("image/") for mime in out.get("data", {})))


def test_every_lesson_shows_its_figures(crawl):
    """Each lesson page shows every figure its notebook produced (a figure drawn while the library had
    switched the backend to Agg, say, is missing from the notebook and so from the page: the count of
    at least one per lesson and the executed notebook's own count both guard it)."""
    problems = []
    for source in lessons.lesson_sources():
        info = crawl["pages"][f"lessons/{source.stem}/"]
        produced = _notebook_figures(lessons.notebook_path(source))
        if produced < 1:
            problems.append(f"{source.name}: its notebook has no figure")
        if info["figures"] != produced:
            problems.append(f"{source.name}: the page shows {info['figures']} figures, the notebook produced {produced}")
    assert not problems, "\n".join(problems)


def test_the_clipping_check_sees_a_clipped_table(browser):
    """The check of ``test_nothing_is_cut_off_at_1280px`` reports a wide table in a box that hides its
    overflow, and accepts the same table in a box that scrolls."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    wide = "<table><tr>" + "<td>column&nbsp;of&nbsp;numbers</td>" * 40 + "</tr></table>"
    try:
        found = {}
        for overflow in ("hidden", "auto"):
            page.set_content(f'<div class="md-content" style="width:800px"><article style="width:760px">'
                             f'<div style="overflow-x:{overflow}; width:700px">{wide}</div></article></div>')  # fmt: skip
            found[overflow] = page.evaluate("(" + _CLIPPED_BOXES.strip() + ")(document.querySelector('article'))")
    finally:
        page.close()
    assert any("<table" in line for line in found["hidden"]), found
    assert found["auto"] == [], found


def test_nothing_is_cut_off_at_1280px(crawl):
    problems = [f"/{rel}: {what}" for rel, info in crawl["pages"].items() for what in info["clipped"]]
    assert not problems, "content cut off at 1280 px:\n" + "\n".join(problems)


def test_every_internal_link_resolves(crawl):
    base = crawl["base"]
    ids = {base + rel: set(info["ids"]) for rel, info in crawl["pages"].items()}
    status: dict[str, int] = {}
    broken = []
    for rel, info in crawl["pages"].items():
        for href in info["links"]:
            if not href.startswith(base):
                continue
            target, _, fragment = href.partition("#")
            if target not in status:
                try:
                    with urllib.request.urlopen(urllib.request.Request(target, method="HEAD"), timeout=10) as r:
                        status[target] = r.status
                except urllib.error.HTTPError as err:
                    status[target] = err.code
            if status[target] != 200:
                broken.append(f"/{rel} -> {href}: HTTP {status[target]}")
            elif fragment and target in ids and urllib.parse.unquote(fragment) not in ids[target]:
                broken.append(f"/{rel} -> {href}: no element with id {fragment!r}")
    assert not broken, "broken internal links:\n" + "\n".join(sorted(set(broken)))
    assert len(status) >= len(crawl["pages"]), "the crawl found fewer link targets than pages"


def test_search_answers_and_palette_toggles(server, browser):
    context = browser.new_context(service_workers="block")
    context.route("**/*", lambda r: r.continue_() if _is_local(r.request.url) else r.abort())
    page = context.new_page()
    page.goto(server, wait_until="load")
    for word, expected_page in [("lightning", "lightning/"), ("softmax", "softmax_attention/")]:
        box = page.locator("input.md-search__input")
        box.click()
        box.fill("")
        box.type(word, delay=20)
        # results update as the word is typed: wait until they include the page about it
        page.wait_for_function(
            """(page) => Array.from(document.querySelectorAll(".md-search-result__item a"))
                              .some(a => new URL(a.href).pathname.endsWith("/" + page))""",
            arg=expected_page,
            timeout=15_000,
        )
        first = page.locator(".md-search-result__item").first.inner_text().lower()
        assert word in first, f"the first result for {word!r} does not mention it: {first[:200]!r}"
        page.keyboard.press("Escape")
    # the palette toggle switches between the light and the dark scheme
    before = page.get_attribute("body", "data-md-color-scheme")
    page.locator("form[data-md-component='palette'] label:visible").first.click()
    after = page.get_attribute("body", "data-md-color-scheme")
    assert {before, after} == {"default", "slate"}, (before, after)
    context.close()
