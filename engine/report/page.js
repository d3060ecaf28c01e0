// kbridge report: draws the sample cards from the embedded JSON, one page at a time.
// Text from the data is only ever set with textContent / attribute setters, never as markup.
(function () {
  "use strict";
  var SAMPLES = JSON.parse(document.getElementById("kb-data").textContent);
  var PAGE = 50;
  var SVGNS = "http://www.w3.org/2000/svg";
  var state = { missing: "all", errorsOnly: false, sort: "index", page: 0 };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function fmt(v) { return v === null || v === undefined ? "–" : Number(v).toFixed(3); }

  // Long labels are cut for the drawing; the whole text is the tooltip (an SVG <title>).
  function short(t) { return t.length > 22 ? t.slice(0, 21) + "…" : t; }
  function title(t) { var e = svg("title", {}); e.textContent = t; return e; }

  // A networkx layout ({n: [[label, x, y]], e: [[i, j, relation]]}) as an inline SVG.
  function graph(g, caption) {
    var box = el("figure", "graph");
    box.appendChild(el("figcaption", null, caption));
    if (!g) { box.appendChild(el("div", "none", "no triples")); return box; }
    var s = svg("svg", { viewBox: "0 0 300 220", width: "300", height: "220", role: "img" });
    g.e.forEach(function (e) {
      var a = g.n[e[0]], b = g.n[e[1]];
      s.appendChild(svg("line", { x1: a[1], y1: a[2], x2: b[1], y2: b[2], "class": "edge" }));
      if (e[2]) {
        var t = svg("text", { x: (a[1] + b[1]) / 2, y: (a[2] + b[2]) / 2 - 3, "class": "rel" });
        t.textContent = short(e[2]);
        t.appendChild(title(e[2]));
        s.appendChild(t);
      }
    });
    g.n.forEach(function (n) {
      s.appendChild(svg("circle", { cx: n[1], cy: n[2], r: 5, "class": "node" }));
      var t = svg("text", { x: n[1], y: n[2] + 15, "class": "nlabel" });
      t.textContent = short(n[0]);
      t.appendChild(title(n[0]));
      s.appendChild(t);
    });
    box.appendChild(s);
    return box;
  }

  function image(src, alt) {
    if (!src) return el("div", "none", "image not found");
    var i = el("img", "thumb");
    i.alt = alt;
    i.src = src;
    return i;
  }

  function candidate(c, best) {
    var d = el("div", "cand" + (c.id === best ? " winner" : ""));
    d.dataset.cand = c.id;
    var head = el("div", "chead");
    head.appendChild(el("b", null, c.id));
    head.appendChild(el("span", "badge " + c.src, c.src + (c.retriever ? " · " + c.retriever : "")));
    if (c.refined === true) head.appendChild(el("span", "badge refined", "refined"));
    if (c.refined === false) head.appendChild(el("span", "badge", "not refined"));
    if (c.id === best) head.appendChild(el("span", "badge best", "★ best"));
    d.appendChild(head);
    if ("img" in c || "path" in c) d.appendChild(image(c.img, c.id));
    if (c.text !== undefined) d.appendChild(el("p", "ctext", c.text));
    d.appendChild(el("div", "scores", "semantic " + fmt(c.s[0]) + " · graph " + fmt(c.s[1]) +
      " · total " + fmt(c.s[2])));
    if (c.prompt) {
      var p = el("details", "prompt");
      p.appendChild(el("summary", null, "prompt"));
      p.appendChild(el("p", null, c.prompt));
      d.appendChild(p);
    }
    return d;
  }

  function card(s) {
    var c = el("article", "card" + (s.err.length ? " has-errors" : ""));
    c.dataset.sample = s.id;
    c.dataset.missing = s.m || "";
    var h = el("h3");
    h.appendChild(el("span", "sid", s.id));
    if (s.m) h.appendChild(el("span", "badge miss", s.m + " missing"));
    if (s.t !== null) h.appendChild(el("span", "badge", "best total " + fmt(s.t)));
    if (s.err.length) h.appendChild(el("span", "badge err", s.err.length + " error" + (s.err.length > 1 ? "s" : "")));
    c.appendChild(h);
    if (!s.c.length) {  // failed before its result was stored: only the errors to show
      c.appendChild(el("p", "none", "no result stored"));
      if (s.err.length) c.appendChild(errors(s.err));
      return c;
    }
    var row = el("div", "row");
    var av = el("div", "avail");
    av.appendChild(el("div", "label", "available " + (s.m === "image" ? "text" : s.m === "text" ? "image" : "")));
    if (s.av.text !== undefined) av.appendChild(el("p", "atext", s.av.text));
    else if ("img" in s.av) av.appendChild(image(s.av.img, "available image"));
    else if (s.av.unavailable) av.appendChild(el("div", "none", s.av.unavailable));
    row.appendChild(av);
    var cands = el("div", "cands");
    s.c.forEach(function (x) { cands.appendChild(candidate(x, s.b)); });
    row.appendChild(cands);
    c.appendChild(row);
    var k = el("div", "row know");
    var ko = el("div", "objects");
    ko.appendChild(el("div", "label", "objects"));
    var ul = el("ul");
    s.o.forEach(function (o) {
      ul.appendChild(el("li", null, o[0] + (o[1] ? " ×" + o[1] : "") + (o[2].length ? " (" + o[2].join(", ") + ")" : "")));
    });
    ko.appendChild(ul);
    ko.appendChild(el("div", "label", "style"));
    ko.appendChild(el("p", null, s.st || "–"));
    k.appendChild(ko);
    k.appendChild(graph(s.g, "sample knowledge graph"));
    k.appendChild(graph(s.bg, "winner's graph" + (s.b ? " (" + s.b + ")" : "")));
    c.appendChild(k);
    if (s.err.length) c.appendChild(errors(s.err));
    return c;
  }

  function errors(es) {
    var eu = el("ul", "errors");
    es.forEach(function (e) { eu.appendChild(el("li", null, e.stage + ": " + e.error)); });
    return eu;
  }

  function visible() {
    var xs = SAMPLES.filter(function (s) {
      return (state.missing === "all" || s.m === state.missing) && (!state.errorsOnly || s.err.length);
    });
    var key = function (s) { return s.t === null ? -1 : s.t; };
    if (state.sort === "total-desc") xs.sort(function (a, b) { return key(b) - key(a); });
    else if (state.sort === "total-asc") xs.sort(function (a, b) { return key(a) - key(b); });
    return xs;
  }

  function draw() {
    var xs = visible();
    var pages = Math.max(1, Math.ceil(xs.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    var box = document.getElementById("cards");
    box.textContent = "";
    var frag = document.createDocumentFragment();
    xs.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (s) { frag.appendChild(card(s)); });
    box.appendChild(frag);
    var pager = document.getElementById("pager");
    pager.textContent = "";
    var prev = el("button", null, "‹ previous"), next = el("button", null, "next ›");
    prev.id = "prev"; next.id = "next";
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
    prev.onclick = function () { state.page -= 1; draw(); window.scrollTo(0, box.offsetTop); };
    next.onclick = function () { state.page += 1; draw(); window.scrollTo(0, box.offsetTop); };
    pager.appendChild(prev);
    var info = el("span", null, "page " + (state.page + 1) + " of " + pages + " · " + xs.length + " of " +
      SAMPLES.length + " samples");
    info.id = "pageinfo";
    pager.appendChild(info);
    pager.appendChild(next);
  }

  function select(id, label, options, onchange) {
    var l = el("label", null, label + " ");
    var s = el("select");
    s.id = id;
    options.forEach(function (o) { var op = el("option", null, o[1]); op.value = o[0]; s.appendChild(op); });
    s.onchange = function () { onchange(s.value); state.page = 0; draw(); };
    l.appendChild(s);
    return l;
  }

  var controls = document.getElementById("controls");
  controls.appendChild(select("f-missing", "missing", [["all", "all"], ["image", "image"], ["text", "text"]],
    function (v) { state.missing = v; }));
  var eo = el("label", null, " errors only ");
  var cb = el("input");
  cb.type = "checkbox";
  cb.id = "f-errors";
  cb.onchange = function () { state.errorsOnly = cb.checked; state.page = 0; draw(); };
  eo.appendChild(cb);
  controls.appendChild(eo);
  controls.appendChild(select("f-sort", "sort", [["index", "run order"], ["total-desc", "best total ↓"],
    ["total-asc", "best total ↑"]], function (v) { state.sort = v; }));
  draw();
})();
