"""The report's profiling section (runs traced with ``kbridge run --trace``): the verdict, the
per-device and per-stage tables of ``kbridge profile``, and an interactive timeline of the
run, or of its busiest window for a big one (every worker's calls and the samples in it; wheel zooms, drag pans,
hovering shows the call's batch). Absent without a trace."""
from __future__ import annotations

import html
from pathlib import Path

from kbridge.engine.trace import DEVICES, SAMPLES
from kbridge.engine.trace.profile import ProfileError, analyse, load

WINDOW_S = 20.0
"""Stretch of the run drawn in the timeline (the busiest one) when the whole run has more than
``MAX_SPANS`` spans; a smaller run is drawn whole."""
MAX_SPANS = 4000
"""Spans embedded in the page at most (the densest first window wins; the rest is in the trace)."""


def _esc(v) -> str:
    return html.escape(str(v), quote=True)


def busiest(spans: list[tuple[int, int]], width: int) -> tuple[int, int]:
    """The [start, start + width) interval whose spans (by their start) hold the most busy time;
    ``spans`` sorted by start. One pass with two pointers."""
    import bisect

    if not spans:
        return 0, width
    starts = [a for a, _ in spans]
    acc = [0]
    for a, b in spans:
        acc.append(acc[-1] + (b - a))
    best, best_t = starts[0], -1
    for i, a in enumerate(starts):
        t = acc[bisect.bisect_left(starts, a + width)] - acc[i]
        if t > best_t:
            best, best_t = a, t
    return best, best + width


def timeline(tr: dict) -> dict:
    """The timeline's data: tracks (workers, then sample lanes) and their spans: the whole run, or
    for a big one its busiest window."""
    dev = tr["spans"][DEVICES]
    every = [(e["ts"], e["ts"] + e["dur"]) for e in dev] + \
        [(e["ts"], e["ts"] + e["dur"]) for e in tr["spans"][SAMPLES] if e["name"] == "sample"]
    t0 = min((a for a, _ in every), default=0)
    t1 = max((b for _, b in every), default=0)
    whole = len(dev) + len(tr["spans"][SAMPLES]) <= MAX_SPANS
    width = max(1, t1 - t0) if whole else min(max(1, t1 - t0), int(WINDOW_S * 1e6))
    a, b = (t0, t0 + width) if whole else \
        busiest(sorted((s, e) for s, e in ((x["ts"], x["ts"] + x["dur"]) for x in dev)), width)
    tracks: dict[str, int] = {}
    spans = []
    for pid, evs in ((DEVICES, dev), (SAMPLES, tr["spans"][SAMPLES])):
        for e in evs:
            if e["ts"] >= b or e["ts"] + e["dur"] <= a or len(spans) >= MAX_SPANS:
                continue
            name = tr["names"].get((pid, e["tid"]), str(e["tid"]))
            track = tracks.setdefault(name, len(tracks))
            args = e.get("args") or {}
            tip = e["name"] + "".join(f" · {k}={v}" for k, v in args.items())
            spans.append([track, round((e["ts"] - a) / 1e3, 3), round(e["dur"] / 1e3, 3), e["name"], tip[:300]])
    return {"t0_ms": round((a - t0) / 1e3, 3), "ms": round((b - a) / 1e3, 3), "whole": whole,
            "tracks": sorted(tracks, key=tracks.get), "spans": spans}


def section(root: Path, script_json) -> str:
    """The section's HTML ('' without a trace); ``script_json`` escapes the embedded data."""
    path = Path(root) / "trace.json.gz"
    if not path.exists():
        return ""
    try:
        tr = load(path)
        p = analyse(tr)
    except (ProfileError, OSError, ValueError, KeyError) as e:
        return f"<section id='profile'><h2>Profile</h2><p class='none'>trace not readable: {_esc(e)}</p></section>"
    rows = "".join(f"<tr><th>{_esc(w)}</th><td>{_esc(', '.join(d['stages']))}</td><td>{d['busy_share']:.0%}</td>"
                   f"<td>{d['calls']}</td><td>{d['batch']['mean']:.2f}</td><td>{d['idle_gaps']['count']} · "
                   f"{d['idle_gaps']['total_s']:.2f} s</td></tr>" for w, d in p["devices"].items())
    stages = "".join(f"<tr><th>{_esc(n)}</th><td>{s['samples']}</td><td>{s['throughput_per_s']:.2f}</td>"
                     f"<td>{s['wait_p50_s']:.3f} / {s['wait_p95_s']:.3f} s</td><td>{s['critical_share']:.0%}</td></tr>"
                     for n, s in p["stages"].items())
    kinds = "".join(f"<li>{_esc(k)}-missing: " + _esc(", ".join(f"{st} {v:.0%}" for st, v in list(sh.items())[:4]))
                    + "</li>" for k, sh in p["kinds"].items())
    verdict = "".join(f"<p class='verdict'>{_esc(line)}</p>" for line in p["verdict"])
    js = (Path(__file__).parent / "timeline.js").read_text()
    tl = timeline(tr)
    return ("<section id='profile'><h2>Profile</h2>" + verdict +
            "<div class='cols'><div><h3>Devices / workers</h3><table class='prof'><tr><th>worker</th><th>stages</th>"
            f"<th>busy</th><th>calls</th><th>mean batch</th><th>idle gaps</th></tr>{rows}</table></div>"
            "<div><h3>Stages</h3><table class='prof'><tr><th>stage</th><th>samples</th><th>per s</th>"
            f"<th>queue wait p50 / p95</th><th>critical path</th></tr>{stages}</table>"
            f"<h3>Critical path by sample kind</h3><ul>{kinds}</ul></div></div>"
            f"<h3>Timeline ({'the whole run' if tl['whole'] else f'its busiest {WINDOW_S:g} s'}; wheel zooms, "
            "drag pans)</h3><div id='kb-timeline'></div>"
            f"<script type='application/json' id='kb-timeline-data'>{script_json(tl)}</script>"
            f"<script>{js}</script></section>")
