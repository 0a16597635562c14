// Colour the code blocks in the browser with the vendored highlight.js: the build leaves them plain
// (pymdownx.highlight use_pygments: false), which keeps `mkdocs build` fast for the whole registry.
(function () {
  function colour() {
    document.querySelectorAll("pre code").forEach(function (el) {
      if (el.dataset.highlighted) return;
      var lang = Array.from(el.classList).find(function (c) { return c.startsWith("language-"); });
      if (!lang) el.classList.add("language-python");
      hljs.highlightElement(el);
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(colour);
  } else {
    document.addEventListener("DOMContentLoaded", colour);
  }
})();
