"""A per-stage time plot (stacked horizontal bars, one per row), drawn with matplotlib through the
report's plotting module, so BENCHMARKS.md and ``kbridge report`` share stage colours."""
from __future__ import annotations

from pathlib import Path


def stage_bars(rows: list[dict], stages: list[str], path: Path, title: str) -> Path:
    """rows: [{"name": str, stage: seconds, ...}] → PNG at ``path``."""
    from kbridge.engine.report.plots import stage_bars as draw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(draw(rows, stages, title))
    return path
