"""``kbridge`` — parse, call the engine, format. No logic of its own."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from kbridge.cli.common import ConfigOpt, ProfileOpt, err, fail, load_config, out, setup_logging
from kbridge.engine import config as C


def _choices(t) -> str:
    """A config choice type's values for --help, the default first."""
    return " | ".join(f"{v} (default)" if i == 0 else v for i, v in enumerate(C.choices(t)))

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Training-free missing-modality completion (Knowledge Bridger), fast.")
models_app = typer.Typer(no_args_is_help=True, help="The model zoo: list slots, build tiny twins.")
data_app = typer.Typer(no_args_is_help=True, help="Dataset helpers.")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")


def _register_subapps() -> None:
    from kbridge.cli.bench import bench_app
    from kbridge.cli.cheff import convert_cheff

    app.add_typer(bench_app, name="bench")
    models_app.command("convert-cheff")(convert_cheff)
    from kbridge.cli.mire import convert_mire, mire_app

    models_app.command("convert-mire")(convert_mire)
    app.add_typer(mire_app, name="mire")
    from kbridge.cli.index import index_app

    app.add_typer(index_app, name="index")
    from kbridge.cli.lmm import lmm_app
    app.add_typer(lmm_app, name="lmm")
    from kbridge.cli.export import export

    app.command("export")(export)
    from kbridge.cli.plan import plan

    app.command("plan")(plan)
    from kbridge.cli.classify import classify_app, convert_dcp, convert_rep

    app.add_typer(classify_app, name="classify")
    models_app.command("convert-dcp")(convert_dcp)
    models_app.command("convert-rep")(convert_rep)
    from kbridge.cli.recover import convert_dicmor, recover, train_dicmor

    app.command("recover")(recover)
    models_app.command("convert-dicmor")(convert_dicmor)
    models_app.command("train-dicmor")(train_dicmor)
    from kbridge.cli.serve import serve

    app.command("serve")(serve)
    from kbridge.cli.report import report

    app.command("report")(report)
    from kbridge.cli.profile import profile

    app.command("profile")(profile)


_register_subapps()
LmmPath = typer.Option(None, "--lmm-path", help="Local Qwen2-VL directory (default: tiny twin).")
BasePath = typer.Option(None, "--sdxl-base-path", help="Local SDXL base directory (diffusers layout).")
RefinerPath = typer.Option(None, "--sdxl-refiner-path", help="Local SDXL refiner directory.")
ClipPath = typer.Option(None, "--clip-path", help="Local CLIP directory.")


@app.command()
def run(
    profile: str = ProfileOpt,
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory (default: bundled demo set)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="coco | mmimdb | iuxray (detected when unambiguous)."),
    missing: Optional[Path] = typer.Option(None, "--missing", help="Missing config (reference format)."),
    out_dir: Path = typer.Option(Path("kbridge-out"), "--out", help="Run directory (re-run to resume)."),
    candidates: Optional[int] = typer.Option(None, "--candidates", help="Candidates per incomplete sample."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N incomplete samples."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="Metadata file of the dataset (default: "
                                            "metadata.json, train.json or data.json in --data)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Root seed."),
    fidelity: Optional[str] = typer.Option(None, "--fidelity", help=f"{_choices(C.Fidelity)} (reference: the "
                                           "multi-turn chains)."),
    config: Optional[Path] = ConfigOpt,
    lmm_path: Optional[str] = LmmPath,
    sdxl_base_path: Optional[str] = BasePath,
    sdxl_refiner_path: Optional[str] = RefinerPath,
    clip_path: Optional[str] = ClipPath,
    refiner: Optional[bool] = typer.Option(None, "--refiner/--no-refiner", help="Run the SDXL refiner."),
    export_completed: Optional[Path] = typer.Option(None, "--export-completed",
                                                    help="Write the completed dataset (reference layout) here."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    domain: Optional[str] = typer.Option(None, "--domain", help=f"{_choices(C.DomainName)} (chest X-rays: Cheff, "
                                         "the medical scorer; 'medical' is accepted too)."),
    lmm: Optional[str] = typer.Option(None, "--lmm", help="URL of an OpenAI-compatible LMM server "
                                      "(e.g. http://127.0.0.1:8000/v1 from kbridge lmm serve): selects the http backend."),
    backend: Optional[str] = typer.Option(None, "--backend",
                                          help=f"Dense-model runtime: {_choices(C.RuntimeBackend)}."),
    schedule: Optional[str] = typer.Option(None, "--schedule",
                                           help=f"{_choices(C.Schedule)} (auto: the GPU memory plan decides)."),
    executor: str = typer.Option("local", "--executor", help="local (default: streaming, in this process) | ray "
                                 "(the same stages as Ray Data operators; needs the ray extra)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="HOST:PORT of a Ray cluster to join "
                                              "(default: start a local instance sized to the machine)."),
    trace: bool = typer.Option(False, "--trace", help="Write the run's timeline (Perfetto / chrome://tracing) to "
                               "OUT/trace.json.gz; `kbridge profile OUT` reads it."),
    trace_file: Optional[Path] = typer.Option(None, "--trace-file", help="Trace here instead (implies --trace)."),
    trace_kernels: Optional[str] = typer.Option(None, "--trace-kernels", help="N..M: torch.profiler ops and kernels "
                                                "while samples N..M run, in the same trace (implies --trace)."),
    trace_every: int = typer.Option(1, "--trace-every", min=1, help="Per-sample spans for every N-th sample only "
                                    "(big runs; device spans and counters are always kept)."),
):
    """Complete every incomplete sample: extract → generate → rank.

    Exit codes: 0 done, 1 nothing completed, 2 could not start, 3 the LMM engine died (re-run resumes)."""
    setup_logging(verbose)
    from kbridge.cli.profile import trace_options

    topts = trace_options(out_dir, trace, trace_file, trace_kernels, trace_every)
    from kbridge.engine.store import RunInUse, check_free

    try:
        check_free(out_dir)  # before the engine's imports: a second run on one --out fails at once
    except RunInUse as e:
        fail(str(e))
    cfg = load_config(profile, config,
                  models=dict(lmm=lmm_path, sdxl_base=sdxl_base_path, sdxl_refiner=sdxl_refiner_path, clip=clip_path),
                  generation=dict(candidates=candidates, refiner=refiner),
                  run=dict(seed=seed, fidelity=fidelity, domain=domain, schedule=schedule),
                  lmm=dict(backend="http" if lmm else None, url=lmm), runtime=dict(backend=backend))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kbridge.engine.api import Engine
    from kbridge.engine.errors import KbridgeError

    progress = Progress(TextColumn("[bold]kbridge run"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, transient=True, disable=not err.is_terminal)
    try:
        with progress:
            task = progress.add_task("samples", total=None)
            report = Engine(cfg).run(data=data, fmt=fmt, missing=missing, out=out_dir, limit=limit,
                                     export=export_completed, executor=executor, ray_address=ray_address,
                                     metadata=metadata, trace=topts,
                                     on_start=lambda total: progress.update(task, total=total),
                                     on_sample=lambda sid, status: progress.advance(task))
    except KbridgeError as e:  # the dataset, the run directory (in use), a model, a backend, the configuration
        fail(str(e))
    except OSError as e:  # the writer stopped the run (disk full, …): what was written stays valid
        fail(f"cannot write to {out_dir}: {e.strerror or e}; the samples written so far are kept, "
              "re-run to finish")
    _summary(report)
    if report.stopped:  # the LMM engine died: exit 3, whatever completed; a re-run resumes
        left = report.incomplete - report.skipped - report.completed - len(report.errors)
        fail(f"the run stopped: the LMM engine died ({report.stopped}); {left} samples were not started; "
             "re-run the same command once the LMM is back: it resumes", 3)
    if report.errors:
        raise typer.Exit(1 if report.completed == 0 and report.skipped == 0 else 0)


def _summary(r) -> None:
    t = Table(title=f"kbridge run → {r.out}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("incomplete samples", str(r.incomplete))
    t.add_row("completed now", str(r.completed))
    t.add_row("already done (resumed)", str(r.skipped))
    t.add_row("errors", str(len(r.errors)))
    t.add_row("candidates", str(r.candidates))
    for stage, sec in r.stage_seconds.items():
        t.add_row(f"time: {stage}", f"{sec:.2f} s")
    t.add_row("time: wall", f"{r.wall_seconds:.2f} s")
    if r.lmm:
        t.add_row("LMM calls (sequences)", str(r.lmm["lmm_calls"]))
        t.add_row("LMM cache hits", str(r.lmm["cache_hits"]))
        t.add_row("LMM tokens prompt / generated", f"{r.lmm['prompt_tokens']} / {r.lmm['generated_tokens']}")
    for kind, c in r.counts_by_missing.items():
        t.add_row(f"per {kind}-missing sample",
                  f"{c.get('lmm_calls', 0):g} LMM calls, {c.get('lmm_serial_turns', 0):g} serial turns, "
                  f"{c.get('unet_evals', 0):g} UNet evals")
    if r.exported:
        t.add_row("exported", f"{r.exported['samples']} samples → {r.exported['path']}")
    out.print(t)


@models_app.command("list")
def models_list(profile: str = ProfileOpt, config: Optional[Path] = ConfigOpt, lmm_path: Optional[str] = LmmPath,
                sdxl_base_path: Optional[str] = BasePath, sdxl_refiner_path: Optional[str] = RefinerPath,
                clip_path: Optional[str] = ClipPath,
                as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Each model slot, its source (tiny / path), location and size."""
    from kbridge.engine.zoo import MODELS, list_models

    cfg = load_config(profile, config, models=dict(lmm=lmm_path, sdxl_base=sdxl_base_path,
                                                     sdxl_refiner=sdxl_refiner_path, clip=clip_path))
    rows = list_models(cfg)
    if as_json:
        print(json.dumps([{"name": m.name, "source": m.source, "path": str(m.path), "ready": m.ready,
                           "size_bytes": m.size_bytes, "real_model": MODELS[m.name][1]} for m in rows], indent=1))
        return
    t = Table(title="kbridge models")
    for col in ("slot", "architecture", "source", "ready", "size", "path"):
        t.add_column(col)
    for m in rows:
        t.add_row(m.name, MODELS[m.name][0], m.source, "yes" if m.ready else "no (built on first use)"
                  if m.source != "path" else "MISSING", f"{m.size_bytes / 1e6:.1f} MB", str(m.path))
    out.print(t)


@models_app.command("build")
def models_build(profile: str = ProfileOpt, config: Optional[Path] = ConfigOpt,
                 full_size: bool = typer.Option(False, "--full-size", help="The real architectures at their "
                                                "published sizes, random weights (for GPU timing; never the default)."),
                 device: str = typer.Option("cuda:0", "--device", help="With --full-size: a CUDA device, or meta "
                                            "(shapes only, to count parameters)")):
    """Build every random-weight twin the profile uses (they are also built on first use)."""
    from kbridge.engine import zoo
    from kbridge.engine.retrieve.mire import checkpoint  # noqa: F401  MIRe registers its twin's builder

    if full_size:
        from kbridge.engine import fullsize
        from kbridge.engine.models import quiet_libraries

        quiet_libraries()
        try:
            fullsize.check_device(device)
            for name in fullsize.FULL_SIZE:
                b = fullsize.build(name, device)
                out.print(f"{name}: {b.params:,} parameters on {device}", highlight=False)
                del b
        except fullsize.FullSizeUnavailable as e:
            fail(str(e))
        return
    cfg = load_config(profile, config)
    for name in zoo.MODELS:
        size = getattr(cfg.models, name)
        if size in zoo.SIZES:
            existed = (zoo.tiny_dir(name, cfg.cache_dir(), size) / ".complete").exists()
            p = zoo.ensure_tiny(name, cfg.cache_dir(), size)
            out.print(f"{name}: {'found cached' if existed else 'built'} {p}")


@data_app.command("make-missing")
def make_missing(
    kind: str = typer.Option("mixed", "--type", help="text | image | mixed"),
    ratio: float = typer.Option(0.7, "--ratio", help="Fraction of samples with a missing modality."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory (its size sets the total)."),
    total: Optional[int] = typer.Option(None, "--total", help="Dataset size, instead of --data."),
    seed: int = typer.Option(0, "--seed"),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Write here (default: stdout)."),
):
    """Write a missing config in the reference format."""
    from kbridge.engine.data import DataError, make_missing as mk, open_dataset

    try:
        # the format only picks the text rule, which counting does not need
        n = total if total is not None else len(open_dataset(data, fmt="coco").items)
        cfg = mk(n, kind, ratio, seed)
    except DataError as e:
        fail(str(e))
    text = json.dumps(cfg, indent=1)
    if out_file:
        out_file.write_text(text + "\n")
        err.print(f"wrote {out_file}: {cfg['num_missing']} of {cfg['total']} samples missing a modality")
    else:
        sys.stdout.write(text + "\n")


def main() -> None:
    app()
