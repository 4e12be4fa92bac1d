// The live figures: fetch the charts again every few seconds while the page is visible.
// Everything else in the explorer works without this file.
(function () {
  "use strict";
  var box = document.getElementById("charts");
  if (!box || !window.fetch) return;
  var every = (parseInt(box.getAttribute("data-poll"), 10) || 5) * 1000;
  function refresh() {
    if (document.hidden) return;
    fetch(box.getAttribute("data-src"), { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) { box.innerHTML = html; box.setAttribute("data-updated", Date.now()); } })
      .catch(function () {});
  }
  setInterval(refresh, every);
})();
