"""``kbridge report``: a run directory as one static, self-contained HTML page.

    from kbridge.engine.report import build_report
    path = build_report("kbridge-out")            # → kbridge-out/report.html
"""
from __future__ import annotations

from pathlib import Path

from kbridge.engine.report.run import ReportError, load_run

__all__ = ["ReportError", "build_report", "load_run"]


def build_report(run_dir: str | Path, out: str | Path | None = None, embed: bool = False) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``). Images are
    relative links from ``out`` to the run's PNGs and the dataset's images, or with ``embed``
    JPEG thumbnails inside the page. Raises ReportError."""
    from kbridge.engine.report.page import render

    run = load_run(run_dir)
    out = Path(out) if out else Path(run_dir) / "report.html"
    if out.is_dir():
        raise ReportError(f"{out} is a directory; --out takes a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(run, out, embed), encoding="utf-8")
    except OSError as e:
        raise ReportError(f"cannot write {out}: {e.strerror or e}") from e
    return out
