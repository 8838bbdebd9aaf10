// Keyboard navigation through a token view: arrow keys move focus, Home/End jump.
(function () {
  "use strict";
  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if (!t || !t.classList || !t.classList.contains("t")) return;
    var moves = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
    var all = Array.prototype.slice.call(t.parentNode.querySelectorAll(".t"));
    var i = all.indexOf(t), next = null;
    if (ev.key in moves) next = all[i + moves[ev.key]];
    else if (ev.key === "Home") next = all[0];
    else if (ev.key === "End") next = all[all.length - 1];
    if (!next) return;
    ev.preventDefault();
    t.tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  });
  // A link to a token (most-moved list) makes that token the focusable one.
  document.addEventListener("click", function (ev) {
    var a = ev.target.closest ? ev.target.closest("a[href^='#']") : null;
    if (!a) return;
    var tok = document.getElementById(a.getAttribute("href").slice(1));
    if (tok && tok.classList.contains("t")) {
      var d = tok.closest("details");
      if (d) d.open = true;
      tok.tabIndex = 0;
      tok.focus();
    }
  });
})();
