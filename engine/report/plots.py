"""The report's plots, drawn with matplotlib (Agg, no display) to PNG bytes.

- ``scores``: the distributions of semantic, graph and total scores, all candidates vs winners;
- ``timeline``: one row per sample, a bar per stage from its ``timings`` (start/end in seconds
  since the run started), so the overlap of LMM stages and diffusion across samples shows; under
  it the number of samples in each stage over time (readable where 10,000 rows are not).
"""
from __future__ import annotations

import io

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGE_COLORS = {"load": "#9c9c9c", "extract": "#4e79a7", "write": "#76b7b2", "render": "#e15759",
                "candidate_knowledge": "#f28e2b", "retrieve": "#b07aa1", "rank": "#59a14f", "store": "#edc948"}
"""Fixed colours for the engine's stages; other stage names take the extra palette in order."""
EXTRA = ["#ff9da7", "#9d7660", "#bab0ac", "#17becf", "#bcbd22"]


def stage_color(stage: str, others: list[str]) -> str:
    if stage in STAGE_COLORS:
        return STAGE_COLORS[stage]
    if stage not in others:
        others.append(stage)
    return EXTRA[others.index(stage) % len(EXTRA)]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def scores(results: list[dict]) -> bytes | None:
    """Histograms of each score; None when no candidate has scores."""
    keys = ("semantic", "graph", "total")
    every = {k: [] for k in keys}
    best = {k: [] for k in keys}
    for r in results:
        for c in r.get("candidates") or []:
            sc = c.get("scores") or {}
            for k in keys:
                if isinstance(sc.get(k), (int, float)):
                    every[k].append(float(sc[k]))
                    if c.get("id") == r.get("best"):
                        best[k].append(float(sc[k]))
    if not any(every.values()):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.6), sharey=False, layout="constrained")
    bins = [i / 20 for i in range(21)]  # scores are in [0, 1]
    for ax, k in zip(axes, keys):
        ax.hist(every[k], bins=bins, color="#b7c7d9", label="all candidates")
        ax.hist(best[k], bins=bins, color="#4e79a7", label="winners")
        ax.set_title(k, fontsize=10)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel("candidates", fontsize=9)
    axes[2].legend(fontsize=8, frameon=False)
    return _png(fig)


LIFETIME = "sample"
"""The timings key spanning a whole sample (admitted → result written, queueing included): drawn
as a thin grey line behind its stages, not as a stage."""


def _span(t) -> tuple[float, float] | None:
    if isinstance(t, dict) and isinstance(t.get("start"), (int, float)) and isinstance(t.get("end"), (int, float)) \
            and t["end"] >= t["start"]:
        return float(t["start"]), float(t["end"])
    return None


def timeline_rows(results: list[dict]) -> list[tuple[str, tuple | None, list[tuple[str, float, float]]]]:
    """[(sample_id, lifetime (start, end) or None, [(stage, start, end), ...])] for samples with
    usable stage timings, ordered by their first start."""
    rows = []
    for r in results:
        timings = r.get("timings") or {}
        if not isinstance(timings, dict):
            continue
        spans = sorted(((str(k), *sp) for k, t in timings.items() if k != LIFETIME and (sp := _span(t))),
                       key=lambda s: s[1])
        if spans:
            rows.append((str(r.get("sample_id")), _span(timings.get(LIFETIME)), spans))
    rows.sort(key=lambda r: r[1][0] if r[1] else r[2][0][1])
    return rows


def occupancy(starts: list[float], ends: list[float], edges: np.ndarray) -> np.ndarray:
    """Mean number of spans open in each bin between consecutive ``edges`` (``len(edges) - 1``
    values): the span time inside a bin divided by the bin's width."""
    a, b = np.asarray(starts, float)[:, None], np.asarray(ends, float)[:, None]  # [spans, 1]
    before = np.clip(edges[None, :] - a, 0.0, b - a).sum(0)  # [edges]: span time before each edge
    return np.diff(before) / np.diff(edges)


def timeline(results: list[dict]) -> bytes | None:
    """Per-sample stage timeline; None when no result carries timings (older runs)."""
    rows = timeline_rows(results)
    if not rows:
        return None
    n = len(rows)
    height = min(7.0, 1.2 + 0.22 * n)
    fig, (ax, busy) = plt.subplots(2, 1, figsize=(10, height + 1.8), sharex=True, layout="constrained",
                                   height_ratios=[height, 1.8])
    # one LineCollection per stage (hlines), so 10,000 rows cost no more than a few calls
    lw = max(0.4, min(10.0, 0.8 * 72 * (height - 1.0) / n))
    life = [(y, sp) for y, (_, sp, _) in enumerate(rows) if sp]
    if life:
        ax.hlines([y for y, _ in life], [a for _, (a, _) in life], [b for _, (_, b) in life], colors="#cccccc",
                  linewidth=max(0.3, lw / 4), label="sample (admitted → stored)")
    by_stage: dict[str, tuple[list, list, list]] = {}
    for y, (_, _, spans) in enumerate(rows):
        for stage, a, b in spans:
            ys, x0, x1 = by_stage.setdefault(stage, ([], [], []))
            ys.append(y)
            x0.append(a)
            x1.append(max(b, a + 1e-3))
    others: list[str] = []
    for stage, (ys, x0, x1) in by_stage.items():
        ax.hlines(ys, x0, x1, colors=stage_color(stage, others), linewidth=lw, label=stage)
    ax.set_ylim(n - 0.5, -0.5)
    if n <= 40:
        ax.set_yticks(range(n), [sid for sid, _, _ in rows], fontsize=7)
    else:
        ax.set_ylabel(f"{n} samples, by first start", fontsize=9)
    leg = ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for h in leg.legend_handles:
        h.set_linewidth(5)
    # below: how many samples are in each stage, on average over each of 200 time bins (the time
    # each span spends inside the bin / the bin's width), readable at any number of rows
    t0 = min(min(x0) for _, x0, _ in by_stage.values())
    t_end = max(max(x1) for _, _, x1 in by_stage.values())
    edges = np.linspace(t0, t_end, 201)
    for stage, (_, x0, x1) in by_stage.items():
        busy.stairs(occupancy(x0, x1, edges), edges, color=stage_color(stage, others), linewidth=1.2)
    busy.set_ylabel("samples in\nstage (mean)", fontsize=9)
    busy.set_xlabel("seconds since the run started", fontsize=9)
    busy.tick_params(labelsize=8)
    return _png(fig)


def stage_bars(rows: list[dict], stages: list[str], title: str) -> bytes:
    """Stacked horizontal bars, one per row: rows ``[{"name": str, stage: seconds, ...}]``."""
    fig, ax = plt.subplots(figsize=(9, max(2.0, 1.1 + 0.45 * len(rows))), layout="constrained")
    left = [0.0] * len(rows)
    names = [str(r["name"])[:32] for r in rows]
    others: list[str] = []
    for s in stages:
        w = [float(r.get(s) or 0.0) for r in rows]
        ax.barh(names, w, left=left, color=stage_color(s, others), label=s, height=0.6)
        left = [a + b for a, b in zip(left, w)]
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.1f} s", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left + [1e-9]) * 1.15)
    ax.set_xlabel("seconds", fontsize=9)
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)
