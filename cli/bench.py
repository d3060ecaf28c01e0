"""``kbridge bench …``: one command per benchmark question, plus ``report`` (BENCHMARKS.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: baseline vs kbridge, measured in one run.")
out = Console()


def _finish(report: dict, json_path: Optional[Path], save_default: bool) -> None:
    from kbridge.benchmarks.harness import rich_table, save

    out.print(rich_table(report))
    for extra in report.get("tables", []):
        out.print(rich_table({"question": report["question"], "title": extra["title"], **extra}))
    for note in report.get("notes", []):
        out.print(f"- {note}")
    if json_path:
        out.print(f"wrote {save(report, json_path)}")
    if save_default:
        out.print(f"wrote {save(report)}")


@bench_app.command("report")
def report(path: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Where to write the markdown.")):
    """Regenerate BENCHMARKS.md from benchmarks/results/*.json."""
    from kbridge.benchmarks.report import write

    out.print(f"wrote {write(path)}")


@bench_app.command("runners")
def runners(profile: Optional[str] = typer.Option(None, "--profile", "-p",
                                                  help="Profile (default: small when present, else tiny)."),
            quick: bool = typer.Option(False, "--quick", help="Fewer repeats and candidates."),
            threads: int = typer.Option(0, "--threads", help="Threads for torch and onnxruntime (0: torch's default)."),
            compile: bool = typer.Option(True, "--compile/--no-compile", help="Include torch.compile rows."),
            json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
            save: bool = typer.Option(True, "--save/--no-save", help="Write benchmarks/results/runners.json.")):
    """torch eager vs torch.compile vs onnxruntime, per model and diffusion per candidate."""
    from kbridge.benchmarks import runners as q
    from kbridge.engine.models import quiet_libraries

    quiet_libraries()
    _finish(q.run(profile, quick, threads, compile), json_path, save)
