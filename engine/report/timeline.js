// kbridge report: the profile's timeline (busiest window). Wheel zooms around the pointer, drag
// pans, hovering a span shows its stage and batch. Labels are set as text, never as markup.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("kb-timeline-data").textContent);
  var box = document.getElementById("kb-timeline");
  var NS = "http://www.w3.org/2000/svg", ROW = 16, LEFT = 170, W = 1100;
  var view = { a: 0, b: Math.max(D.ms, 1) };
  var palette = {};
  var colours = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"];
  function colour(name) {
    if (name.indexOf("wait ") === 0) return "#ddd";
    if (!(name in palette)) palette[name] = colours[Object.keys(palette).length % colours.length];
    return palette[name];
  }
  function node(tag, attrs, text) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  var h = D.tracks.length * ROW + 24;
  var s = node("svg", { width: W, height: h, "class": "timeline", role: "img" });
  box.appendChild(s);
  var info = document.createElement("div");
  info.className = "tl-info";
  box.appendChild(info);
  function draw() {
    while (s.firstChild) s.removeChild(s.firstChild);
    var k = (W - LEFT) / (view.b - view.a);
    D.tracks.forEach(function (t, i) {
      s.appendChild(node("text", { x: 2, y: i * ROW + 12, "class": "tl-track" }, t));
    });
    D.spans.forEach(function (sp) {
      var x0 = LEFT + (sp[1] - view.a) * k, x1 = LEFT + (sp[1] + sp[2] - view.a) * k;
      if (x1 < LEFT || x0 > W) return;
      x0 = Math.max(LEFT, x0); x1 = Math.min(W, x1);
      var r = node("rect", { x: x0, y: sp[0] * ROW + 2, width: Math.max(1, x1 - x0), height: ROW - 4,
                             fill: colour(sp[3]), "class": "tl-span", "data-name": sp[3] });
      r.appendChild(node("title", {}, sp[4]));
      r.addEventListener("mouseenter", function () { info.textContent = sp[4]; });
      s.appendChild(r);
    });
    var y = D.tracks.length * ROW + 16;
    s.appendChild(node("text", { x: LEFT, y: y, "class": "tl-axis" }, (D.t0_ms + view.a).toFixed(1) + " ms"));
    s.appendChild(node("text", { x: W - 90, y: y, "class": "tl-axis" }, (D.t0_ms + view.b).toFixed(1) + " ms"));
  }
  s.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var f = ev.deltaY > 0 ? 1.25 : 0.8, rect = s.getBoundingClientRect();
    var at = view.a + (ev.clientX - rect.left - LEFT) / (W - LEFT) * (view.b - view.a);
    view = { a: at - (at - view.a) * f, b: at + (view.b - at) * f };
    draw();
  });
  var drag = null;
  s.addEventListener("mousedown", function (ev) { drag = { x: ev.clientX, a: view.a, b: view.b }; });
  window.addEventListener("mouseup", function () { drag = null; });
  s.addEventListener("mousemove", function (ev) {
    if (!drag) return;
    var d = (ev.clientX - drag.x) / (W - LEFT) * (drag.b - drag.a);
    view = { a: drag.a - d, b: drag.b - d };
    draw();
  });
  box.kbView = function () { return [view.a, view.b]; };
  draw();
})();
