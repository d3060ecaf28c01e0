"""``kbridge report RUN_DIR``: the HTML gallery of a run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def report(run_dir: Path = typer.Argument(..., help="A run directory (kbridge run --out)."),
           out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default RUN_DIR/report.html)."),
           embed: bool = typer.Option(False, "--embed", help="Embed image thumbnails instead of linking the PNGs."),
           open_: bool = typer.Option(False, "--open", help="Open the page in the default browser.")):
    """Write a static, self-contained HTML page of a run: summary, plots, one card per sample."""
    from kbridge.cli.common import fail, out as console
    from kbridge.engine.report import ReportError, build_report

    try:
        path = build_report(run_dir, out, embed)
    except ReportError as e:
        fail(str(e))
    console.print(f"wrote {path}", highlight=False)
    if open_:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
