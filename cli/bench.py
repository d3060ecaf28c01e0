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


@bench_app.command("maxsim")
def maxsim(
    samples: int = typer.Option(64, "--samples", help="Samples (query sets)."),
    candidates: int = typer.Option(7, "--candidates", help="Candidates per sample."),
    dim: int = typer.Option(512, "--dim", help="Embedding width."),
    repeat: int = typer.Option(15, "--repeat", help="Timed repeats per row (after warm-up)."),
    corpus: int = typer.Option(10_000, "--corpus", help="Items in the retrieval corpus."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
    save_default: bool = typer.Option(True, "--save/--no-save", help="Write benchmarks/results/maxsim.json."),
):
    """MaxSim candidate scoring: the kernel vs a numpy loop and numpy / torch compositions; retrieval."""
    from kbridge.benchmarks.harness import stamp
    from kbridge.benchmarks.maxsim import run

    _finish(stamp(run(samples=samples, candidates=candidates, dim=dim, repeat=repeat, corpus=corpus)), json_path,
            save_default)
