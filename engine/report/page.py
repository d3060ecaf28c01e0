"""The report page: one self-contained HTML file (CSS, script and the run's data inline).

The sample cards are drawn in the browser from the embedded data, one page at a time
(``page.js``), so a 10,000-sample run opens as fast as a 50-sample one; the summary and plots are
rendered here. Text from the data reaches the page only as escaped HTML (summary) or as DOM text
nodes (cards): a caption containing ``<script>`` shows as text.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from kbridge.engine.report import plots
from kbridge.engine.report.graph import layout
from kbridge.engine.report.run import Run, available

HERE = Path(__file__).parent
PER_SAMPLE = (("lmm_calls", "LMM calls"), ("lmm_serial_turns", "serial turns"), ("unet_evals", "UNet evals"))
"""The counted figures shown per image- / text-missing sample (manifest ``counts_by_missing``)."""
THUMB = 256
"""Longest side of an embedded thumbnail (``--embed``), in pixels."""


def _esc(v) -> str:
    return html.escape(str(v), quote=True)


def script_json(obj) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' survive literally, so no string
    in the data can close the element or open a comment."""
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _thumb_uri(path: Path) -> str | None:
    from kbridge.engine.data import load_image

    try:
        img = load_image(path)
    except (OSError, ValueError):
        return None
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


class _Images:
    """Image references as seen from the report file: relative links, or embedded thumbnails."""

    def __init__(self, run_root: Path, out_dir: Path, embed: bool):
        self.run_root, self.out_dir, self.embed = run_root.resolve(), out_dir.resolve(), embed
        # the run's own PNGs are relative to the run directory: one relpath for all of them
        self.prefix = Path(os.path.relpath(self.run_root, self.out_dir))

    def ref(self, path: Path) -> str | None:
        inside = not path.is_absolute()
        path = self.run_root / path if inside else path
        if self.embed:
            return _thumb_uri(path)
        if not path.exists():
            return None
        rel = (self.prefix / path.relative_to(self.run_root)) if inside else \
            Path(os.path.relpath(path.resolve(), self.out_dir))
        return rel.as_posix().replace("%", "%25").replace("#", "%23").replace("?", "%3F")


def _num(v):
    return round(float(v), 4) if isinstance(v, (int, float)) else None


def sample_data(run: Run, row: dict, errors: list[dict], images: _Images, shapes: dict | None = None) -> dict:
    """The compact per-card record page.js draws (keys kept short: 10k of these are embedded).
    ``shapes`` is the layout cache shared by the report's graphs (graph.shape_positions)."""
    know = row.get("knowledge") or {}
    best = row.get("best")
    cands, best_triples = [], None
    for c in row.get("candidates") or []:
        sc = c.get("scores") or {}
        d = {"id": str(c.get("id")), "src": str(c.get("source") or ""),
             "s": [_num(sc.get("semantic")), _num(sc.get("graph")), _num(sc.get("total"))]}
        if c.get("image"):
            d["img"] = images.ref(Path(c["image"]))
            d["path"] = str(c["image"])
        if c.get("text") is not None:
            d["text"] = str(c["text"])
        if c.get("prompt"):
            d["prompt"] = str(c["prompt"])
        for key in ("refined", "retriever"):
            if key in c:
                d[key] = c[key]
        if c.get("id") == best:
            best_triples = c.get("triples") or []
        cands.append(d)
    av = available(run, row)
    if "image" in av:
        ref = images.ref(av["image"])
        av = {"img": ref, "path": str(av["image"])} if ref else {"unavailable": f"cannot read {av['image']}"}
    winner = next((c for c in cands if c["id"] == best), None)
    objects = [[str(o.get("name", "")), o.get("count"), [str(a) for a in o.get("attributes") or []]]
               for o in know.get("objects") or [] if isinstance(o, dict)]
    return {"id": str(row.get("sample_id")), "i": row.get("index"), "m": row.get("missing"), "av": av,
            "o": objects, "st": str(know.get("style") or ""), "g": layout(know.get("triples") or [], cache=shapes),
            "c": cands, "b": best, "bg": layout(best_triples, cache=shapes) if best_triples is not None else None,
            "t": winner["s"][2] if winner else None,
            "err": [{"stage": str(e.get("stage", "")), "error": str(e.get("error", ""))} for e in errors]}


def error_only(sid: str, errors: list[dict]) -> dict:
    """A card for a sample that has errors and no result (it failed before it was stored)."""
    index = sid.rsplit(":", 1)[-1]
    return {"id": sid, "i": int(index) if index.isdigit() else None, "m": None, "av": {}, "o": [], "st": "",
            "g": None, "c": [], "b": None, "bg": None, "t": None,
            "err": [{"stage": str(e.get("stage", "")), "error": str(e.get("error", ""))} for e in errors]}


def cards(run: Run, out_dir: Path, embed: bool) -> list[dict]:
    images = _Images(run.root, out_dir, embed)
    errs: dict[str, list[dict]] = {}
    for e in run.errors:
        errs.setdefault(str(e.get("sample_id")), []).append(e)
    seen, out, shapes = set(), [], {}
    for row in run.results:
        sid = str(row.get("sample_id"))
        seen.add(sid)
        out.append(sample_data(run, row, errs.get(sid, []), images, shapes))
    out += [error_only(sid, es) for sid, es in errs.items() if sid not in seen]
    return out


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table class='kv'>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows) \
        + "</table>"


def _png_img(data: bytes | None, alt: str) -> str:
    if not data:
        return ""
    return f"<img class='plot' alt='{_esc(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"


def summary(run: Run, cards_: list[dict]) -> str:
    """The run summary at the top of the page (HTML, every value escaped)."""
    m = run.manifest
    tot = m.get("totals") or {}
    failed = {c["id"] for c in cards_ if c["err"] and not c["c"]}
    counts = [("samples with results", len(run.results)),
              ("failed (errors, no result)", len(failed)),
              ("error lines", len(run.errors)),
              ("incomplete samples (last run)", tot.get("incomplete", "–")),
              ("runs (resumes + 1)", tot.get("runs", "–")),
              ("candidates", sum(len(r.get("candidates") or []) for r in run.results)),
              ("wall time, last run", f"{tot['wall_seconds_this_run']:.1f} s"
               if isinstance(tot.get("wall_seconds_this_run"), (int, float)) else "–")]
    if "resumed_this_run" in tot:  # not written by every version of the run store
        counts.insert(5, ("resumed at the last run's start", tot["resumed_this_run"]))
    sums: dict[str, float] = {}
    for r in run.results:
        for k, v in (r.get("counts") or {}).items():
            if isinstance(v, (int, float)):
                sums[k] = sums.get(k, 0) + v
    lmm = tot.get("lmm_this_run") or {}
    work = [("LMM calls", sums.get("lmm_calls", lmm.get("lmm_calls", "–"))),
            ("LMM cache hits", sums.get("cache_hits", lmm.get("cache_hits", "–"))),
            ("LMM tokens prompt / generated", f"{sums.get('prompt_tokens', lmm.get('prompt_tokens', '–'))} / "
                                              f"{sums.get('generated_tokens', lmm.get('generated_tokens', '–'))}"),
            ("UNet evaluations", sums.get("unet_evals", "–")),
            ("VAE decodes", sums.get("vae_decodes", "–"))]
    work = [(k, f"{v:g}" if isinstance(v, float) else v) for k, v in work]
    lat = sorted(float(t) for r in run.results
                 if isinstance(t := ((r.get("timings") or {}).get(plots.LIFETIME) or {}).get("seconds"), (int, float)))
    if lat:  # admitted → result written, from the samples' own timings (all runs into this directory)
        counts.append(("sample latency p50 / p95", f"{np.percentile(lat, 50):.2f} / {np.percentile(lat, 95):.2f} s"))
    stages = [(f"{k}", f"{v:.2f} s") for k, v in (tot.get("stage_seconds_this_run") or {}).items()
              if isinstance(v, (int, float))]
    by_missing = [(f"per {k}-missing sample", ", ".join(f"{vv:g} {label}" for kk, label in PER_SAMPLE
                                                         if isinstance(vv := v.get(kk), (int, float))))
                  for k, v in (m.get("counts_by_missing") or {}).items() if isinstance(v, dict)]
    data = m.get("data") or {}
    about = [("run directory", run.root), ("profile", m.get("profile", "–")), ("created", m.get("created", "–")),
             ("dataset", f"{data.get('name', '–')} ({data.get('format', '–')}, {data.get('items', '–')} items)"),
             ("dataset root", data.get("root", "–")), ("missing config", data.get("missing", "–")),
             ("config hash", m.get("config_hash", "–"))]
    versions = [(k, v) for k, v in (m.get("versions") or {}).items()]
    parts = ["<section id='summary'><h2>Run</h2><div class='cols'>",
             f"<div><h3>Samples</h3>{_table(counts)}</div>",
             f"<div><h3>Work</h3>{_table(work + by_missing)}</div>",
             f"<div><h3>Busy time per stage, last run</h3>{_table(stages) if stages else '<p>–</p>'}</div>",
             f"<div><h3>About</h3>{_table(about)}</div></div>"]
    if run.notes:
        parts.append("<ul class='notes'>" + "".join(f"<li>{_esc(n)}</li>" for n in run.notes) + "</ul>")
    parts.append("<details><summary>configuration and versions</summary><div class='cols'>"
                 f"<pre>{_esc(json.dumps(m.get('config') or {}, indent=1))}</pre>{_table(versions)}</div></details>")
    sc = plots.scores(run.results)
    tl = plots.timeline(run.results)
    parts.append("<h3>Scores</h3>" + (_png_img(sc, "score distributions") or "<p>no scores</p>"))
    parts.append("<h3>Stage timeline</h3>" + (_png_img(tl, "per-sample stage timeline")
                                              or "<p class='none'>no per-stage timings in this run</p>"))
    from kbridge.engine.report.profile import section  # kbridge run --trace: the profile and its timeline

    return "".join(parts) + "</section>" + section(run.root, script_json)


def render(run: Run, out_file: Path, embed: bool = False, title: str | None = None) -> str:
    """The whole page as a string."""
    out_dir = Path(out_file).resolve().parent
    cs = cards(run, out_dir, embed)
    title = title or f"kbridge report: {run.root.resolve().name}"
    css = (HERE / "page.css").read_text()
    js = (HERE / "page.js").read_text()
    meta = {"title": title, "generated": time.strftime("%Y-%m-%d %H:%M:%S")}
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src 'self' file: data:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<meta name='viewport' content='width=device-width'><title>{_esc(title)}</title>"
            f"<style>{css}</style></head><body><header><h1>{_esc(title)}</h1>"
            f"<span class='gen'>generated {_esc(meta['generated'])} by kbridge report</span></header>"
            f"{summary(run, cs)}"
            "<section id='samples'><h2>Samples</h2><div id='controls'></div><div id='cards'></div>"
            "<div id='pager'></div></section>"
            f"<script type='application/json' id='kb-data'>{script_json(cs)}</script>"
            f"<script>{js}</script></body></html>")
