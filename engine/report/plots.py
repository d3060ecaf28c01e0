"""The report's plots, drawn with matplotlib (Agg, no display) to PNG bytes.

- ``scores``: the distributions of semantic, graph and total scores, all candidates vs winners;
- ``timeline``: one row per sample, a bar per stage from its ``timings`` (start/end in seconds
  since the run started), so the overlap of LMM stages and diffusion across samples shows.
"""
from __future__ import annotations

import io

import matplotlib

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


def timeline_rows(results: list[dict]) -> list[tuple[str, list[tuple[str, float, float]]]]:
    """[(sample_id, [(stage, start, end), ...])] for samples with usable timings, ordered by
    their first start."""
    rows = []
    for r in results:
        spans = []
        for stage, t in (r.get("timings") or {}).items():
            if isinstance(t, dict) and isinstance(t.get("start"), (int, float)) \
                    and isinstance(t.get("end"), (int, float)) and t["end"] >= t["start"]:
                spans.append((str(stage), float(t["start"]), float(t["end"])))
        if spans:
            rows.append((str(r.get("sample_id")), sorted(spans, key=lambda s: s[1])))
    rows.sort(key=lambda r: r[1][0][1])
    return rows


def timeline(results: list[dict]) -> bytes | None:
    """Per-sample stage timeline; None when no result carries timings (older runs)."""
    rows = timeline_rows(results)
    if not rows:
        return None
    n = len(rows)
    height = min(8.0, 1.2 + 0.22 * n)
    fig, ax = plt.subplots(figsize=(10, height), layout="constrained")
    # one LineCollection per stage (hlines), so 10,000 rows cost no more than a few calls
    lw = max(0.4, min(10.0, 0.8 * 72 * (height - 1.0) / n))
    by_stage: dict[str, tuple[list, list, list]] = {}
    for y, (_, spans) in enumerate(rows):
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
        ax.set_yticks(range(n), [sid for sid, _ in rows], fontsize=7)
    else:
        ax.set_ylabel(f"{n} samples, by first start", fontsize=9)
    ax.set_xlabel("seconds since the run started", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
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
