"""``kbridge profile RUN_DIR``: where a traced run's time went (engine/trace/profile.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def trace_options(out_dir: Path, trace: bool, trace_file: Optional[Path], kernels: Optional[str], every: int = 1):
    """The run's TraceOptions from the --trace flags (None: no trace)."""
    if not (trace or trace_file or kernels):
        return None
    from kbridge.cli.common import fail
    from kbridge.engine.trace import TraceOptions, default_path, parse_window

    window = None
    if kernels:
        try:
            window = parse_window(kernels)
        except ValueError as e:
            fail(str(e))
    return TraceOptions(Path(trace_file) if trace_file else default_path(out_dir), sample_every=every, kernels=window)


def profile(run_dir: Path = typer.Argument(..., help="A run directory written with `kbridge run --trace`."),
            trace: Optional[Path] = typer.Option(None, "--trace", help="The trace file (default RUN_DIR/trace.json.gz)."),
            run: Optional[int] = typer.Option(None, "--run", min=1, help="Which run of a resumed directory (default: "
                                              "the last)."),
            json_path: Optional[Path] = typer.Option(None, "--json", help="Where to write the profile as JSON (default "
                                                     "RUN_DIR/profile.json)."),
            export: Optional[Path] = typer.Option(None, "--export", help="Also write the trace as one plain JSON "
                                                  "object (for viewers that do not read multi-member gzip).")):
    """Per device busy share, idle gaps and batch sizes; per stage throughput, queue waits and share of
    the critical paths; per sample kind; and a verdict: the bottleneck and the knob that moves it."""
    from rich.table import Table

    from kbridge.cli.common import fail, out
    from kbridge.engine.trace.profile import ProfileError
    from kbridge.engine.trace.profile import profile as build

    try:
        p = build(run_dir, trace, run)
    except (ProfileError, OSError) as e:
        fail(str(e))
    dest = json_path or Path(run_dir) / "profile.json"
    dest.write_text(json.dumps(p, indent=1), encoding="utf-8")
    if export:
        from kbridge.engine.trace.io import export_json

        export_json(p["trace"], export)
    t = Table(title=f"devices / workers — {p['samples']} samples in {p['window_s']:.2f} s (run {p['run']})",
              title_justify="left")
    for c in ("worker", "stages", "busy", "calls", "mean batch", "idle gaps (n, total, max)"):
        t.add_column(c, justify="left" if c in ("worker", "stages") else "right")
    for w, d in p["devices"].items():
        g = d["idle_gaps"]
        t.add_row(w, ", ".join(d["stages"]), f"{d['busy_share']:.0%}", str(d["calls"]), f"{d['batch']['mean']:.2f}",
                  f"{g['count']}, {g['total_s']:.2f} s, {g['max_s']:.2f} s")
    out.print(t)
    t = Table(title="stages", title_justify="left")
    for c in ("stage", "samples", "per s", "work p50", "wait p50 / p95", "critical path"):
        t.add_column(c, justify="left" if c == "stage" else "right")
    for name, s in p["stages"].items():
        t.add_row(name, str(s["samples"]), f"{s['throughput_per_s']:.2f}", f"{s['work_p50_s']:.3f} s",
                  f"{s['wait_p50_s']:.3f} / {s['wait_p95_s']:.3f} s", f"{s['critical_share']:.0%}")
    out.print(t)
    for kind, shares in p["kinds"].items():
        top = ", ".join(f"{k} {v:.0%}" for k, v in list(shares.items())[:4])
        out.print(f"{kind}-missing samples: critical path → {top}", highlight=False)
    for line in p["verdict"]:
        out.print(line, highlight=False)
    out.print(f"wrote {dest}", highlight=False)
