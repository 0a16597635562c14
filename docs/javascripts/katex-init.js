// Typeset the math that pymdownx.arithmatex (generic mode) leaves in `.arithmatex` elements,
// with the KaTeX copy vendored beside this file. Runs on every page load, including
// mkdocs-material's instant navigation (document$ observable).
(function () {
  function typeset() {
    document.querySelectorAll(".arithmatex").forEach(function (el) {
      if (el.dataset.katexDone) return;
      renderMathInElement(el, {
        delimiters: [
          { left: "\\(", right: "\\)", display: false },
          { left: "\\[", right: "\\]", display: true },
        ],
        throwOnError: false,
      });
      el.dataset.katexDone = "1";
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(typeset);
  } else {
    document.addEventListener("DOMContentLoaded", typeset);
  }
})();
