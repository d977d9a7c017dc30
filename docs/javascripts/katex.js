// Render every formula on the page with the vendored KaTeX (no CDN, no MathJax).
//  * Markdown pages: pymdownx.arithmatex (generic mode) wraps math in .arithmatex as \( \) or \[ \].
//  * Lesson notebooks: nbconvert leaves $...$ and $$...$$ verbatim in the rendered Markdown cells.
// auto-render skips <pre>, <code>, <script>, <style> and <textarea>, so code is never touched.
// A formula KaTeX cannot parse is reported on the console (the site test fails on console errors).
(function () {
  function render(root) {
    if (typeof renderMathInElement !== "function") {
      console.error("KaTeX auto-render is missing: formulas stay as TeX");
      return;
    }
    var common = { throwOnError: false, strict: "ignore", errorCallback: console.error };
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      renderMathInElement(el, Object.assign({}, common, {
        delimiters: [
          { left: "\\(", right: "\\)", display: false },
          { left: "\\[", right: "\\]", display: true },
        ],
      }));
    });
    root.querySelectorAll(".jp-RenderedMarkdown, .jp-MarkdownOutput").forEach(function (el) {
      renderMathInElement(el, Object.assign({}, common, {
        delimiters: [
          { left: "$$", right: "$$", display: true },
          { left: "$", right: "$", display: false },
          { left: "\\(", right: "\\)", display: false },
          { left: "\\[", right: "\\]", display: true },
        ],
        ignoredClasses: ["katex"],
      }));
    });
    document.body.setAttribute("data-math-rendered", "true");
  }
  if (typeof document$ !== "undefined" && document$.subscribe) {
    document$.subscribe(function () { render(document.body); });
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { render(document.body); });
  } else {
    render(document.body);
  }
})();
