"""``kbridge bench …``: one command per benchmark question, plus ``report`` (BENCHMARKS.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: baseline vs kbridge, measured in one run.")
out = Console(width=160)


@bench_app.callback()
def _start() -> None:
    """Every command records the machine's load at its start (rows without their own record get it)."""
    from kbridge.benchmarks.harness import begin

    begin()


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
def report(path: Path = typer.Option(Path("BENCHMARKS.md"), "--out", help="Where to write the markdown."),
           allow_loaded: bool = typer.Option(False, "--allow-loaded",
                                             help="Include rows measured on a loaded machine (marked [loaded]).")):
    """Regenerate BENCHMARKS.md from benchmarks/results/*.json (rows measured under load left out)."""
    from kbridge.benchmarks.report import write

    out.print(f"wrote {write(path, allow_loaded=allow_loaded)}")


@bench_app.command("trace")
def trace(profile: str = typer.Option("tiny", "--profile", "-p", help="Profile of both rows."),
          samples: int = typer.Option(8, "--samples", min=2, help="Incomplete samples (alternating kinds)."),
          repeats: int = typer.Option(3, "--repeats", min=1, help="Runs per row, alternating order."),
          json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
          save: bool = typer.Option(True, "--save/--no-save", help="Write benchmarks/results/trace.json (trace_PROFILE.json for a profile other than tiny).")):
    """The cost of `kbridge run --trace`: wall time with and without, events and bytes per sample."""
    from kbridge.benchmarks import trace as q
    from kbridge.engine.models import quiet_libraries

    quiet_libraries()
    _finish(q.run(profile, samples, repeats), json_path, save)


@bench_app.command("e2e")
def e2e(profile: str = typer.Option("small", "--profile", "-p", help="Profile for both rows."),
        samples: int = typer.Option(4, "--samples", help="Incomplete samples (half image-, half text-missing)."),
        json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
        quick: bool = typer.Option(False, "--quick", help="2 samples; finishes within 5 minutes here."),
        threads: int = typer.Option(0, "--threads", help="torch threads for both rows (0: torch's default)."),
        save: bool = typer.Option(True, "--save/--no-save",
                                  help="Write benchmarks/results/e2e.json (e2e_ladder.json with --ladder)."),
        backends: str = typer.Option("torch", "--backends",
                                     help="kbridge rows, one per dense-model runtime: e.g. torch,onnx."),
        lmm_backends: str = typer.Option("hf", "--lmm-backends",
                                         help="kbridge rows, one per LMM backend: hf (default) and vllm "
                                              "(in-process; on CPU run from .venv-vllm)."),
        repeats: Optional[int] = typer.Option(None, "--repeats", "--repeat", min=1,
                                              help="Repetitions per row, alternating order (default 3; --quick 1; BENCHMARKS.md shows "
                                                   "only rows with >= 3)."),
        ladder: bool = typer.Option(False, "--ladder",
                                    help="One cumulative row per rung: baseline, fast, +parallel, +render batch 2, ..."),
        allow_loaded: bool = typer.Option(False, "--allow-loaded",
                                          help="Compute ratios even from rows measured on a loaded machine."),
        precision: bool = typer.Option(True, "--precision/--no-precision",
                                       help="--ladder: also the baseline and the last exact rung in bfloat16.")):
    """Reference execution pattern vs kbridge, end to end, on the same samples in one process."""
    from kbridge.benchmarks import e2e as q
    from kbridge.benchmarks import ladder as lad
    from kbridge.engine.models import quiet_libraries

    quiet_libraries()
    if ladder:
        _finish(lad.run(profile, samples, quick, threads, repeats, allow_loaded, precision), json_path, save)
        return
    from kbridge.cli.common import fail
    from kbridge.engine.config import ConfigError

    try:
        report = q.run(profile, samples, quick, threads, _names(backends), repeats, allow_loaded, _names(lmm_backends))
    except ConfigError as e:  # an unknown backend, or vllm where vLLM cannot run
        fail(str(e))
    _finish(report, json_path, save)


def _names(csv: str) -> tuple[str, ...]:
    return tuple(b.strip() for b in csv.split(",") if b.strip())


@bench_app.command("scale")
def scale(sizes: str = typer.Option("1000,10000,50000", "--sizes", help="Dataset sizes (records)."),
          first: int = typer.Option(16, "--first", help="Stop after this many completed samples."),
          json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
          save: bool = typer.Option(True, "--save/--no-save", help="Write benchmarks/results/scale.json.")):
    """Peak RSS of `kbridge run` after its first samples, on synthetic datasets of growing size."""
    from kbridge.benchmarks import scale as q

    _finish(q.run(tuple(int(x) for x in sizes.split(",") if x.strip()), first), json_path, save)


@bench_app.command("cheff")
def cheff(profile: str = typer.Option("tiny", "--profile", "-p", help="Profile (the Cheff twin or [models] cheff)."),
          candidates: int = typer.Option(7, "--candidates", help="Candidates per sample."),
          samples: int = typer.Option(2, "--samples", help="Samples rendered together."),
          steps: Optional[int] = typer.Option(None, "--steps", help="DDIM steps (default: the profile's)."),
          repeat: int = typer.Option(3, "--repeat", help="Timed repeats after one warm-up."),
          json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
          save: bool = typer.Option(True, "--save/--no-save", help="Write benchmarks/results/cheff.json.")):
    """Cheff X-ray sampling: one at a time (reference) vs batched across candidates and samples."""
    from kbridge.benchmarks import cheff as q
    from kbridge.engine.models import quiet_libraries

    quiet_libraries()
    _finish(q.run(profile, candidates, samples, steps, repeat), json_path, save)


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


@bench_app.command("retrieve")
def retrieve(docs: int = typer.Option(20_000, "--docs", help="Documents (token bags) in the synthetic corpus."),
             dim: int = typer.Option(128, "--dim", help="Token width (MIRe: 128)."),
             queries: int = typer.Option(50, "--queries", help="Queries (10 tokens each)."),
             repeat: int = typer.Option(3, "--repeat", help="Timed repeats per row (after warm-up)."),
             quick: bool = typer.Option(False, "--quick", help="10,000 documents, 20 queries, 2 repeats."),
             json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
             save: bool = typer.Option(True, "--save/--no-save", help="Write benchmarks/results/retrieve.json.")):
    """MaxSim retrieval over token bags: the late-interaction index vs brute force vs faiss flat."""
    from kbridge.benchmarks.harness import stamp
    from kbridge.benchmarks.retrieve import run

    if quick:
        docs, queries, repeat = min(docs, 10_000), min(queries, 20), min(repeat, 2)
    _finish(stamp(run(docs=docs, dim=dim, queries=queries, repeat=repeat)), json_path, save)


@bench_app.command("render")
def render(profile: str = typer.Option("small", "--profile", "-p", help="Profile whose render settings are the reference."),
           candidates: int = typer.Option(7, "--candidates", help="Candidates rendered per call."),
           repeats: int = typer.Option(3, "--repeats", "--repeat", min=1, help="Timed repetitions, alternating order."),
           compile: bool = typer.Option(True, "--compile/--no-compile", help="Include the torch.compile row."),
           only: Optional[str] = typer.Option(None, "--only", help="Comma-separated variant names (substrings); "
                                              "the profile row is always run."),
           allow_loaded: bool = typer.Option(False, "--allow-loaded", help="Ratios even from loaded rows."),
           json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
           save: bool = typer.Option(True, "--save/--no-save", help="Write benchmarks/results/render.json.")):
    """Render on CPU: micro-batch, channels-last, threads, torch.compile, onnxruntime; bf16 with its fidelity."""
    from kbridge.benchmarks import render as q
    from kbridge.engine.models import quiet_libraries

    quiet_libraries()
    _finish(q.run(profile, candidates, repeats, compile, tuple(o.strip() for o in (only or "").split(",") if o.strip()),
                  allow_loaded), json_path, save)


@bench_app.command("lmm")
def lmm(quick: bool = typer.Option(False, "--quick", help="4 demo samples, 16 requests, 2 repeats."),
        json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
        save: bool = typer.Option(True, "--save/--no-save", help="Write benchmarks/results/lmm.json."),
        engines: bool = typer.Option(False, "--engines", help="Instead: hf vs vLLM in-process vs vLLM over HTTP "
                                     "at 1/8/32 in flight, 8/16/32 requests (--quick: 4 at 1, 8 at 8; needs vLLM: "
                                     ".venv-vllm); writes lmm_engines.json.")):
    """LMM sequences, serial turns and tokens per sample (reference vs fast); throughput at 1/4/16 in flight."""
    if engines:
        from kbridge.benchmarks.lmm_engines import run as run_engines
        from kbridge.engine.lmm.vllm_local import vllm_platform

        if vllm_platform() not in ("cpu", "cuda"):
            Console(stderr=True).print("error: kbridge bench lmm --engines needs vLLM (bash scripts/vllm_env.sh; "
                                       "run it with .venv-vllm/bin/kbridge)", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        return _finish(run_engines(quick=quick), json_path, save)
    from kbridge.benchmarks.lmm import run

    _finish(run(quick=quick), json_path, save)


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


@bench_app.command("serve")
def serve(profile: str = typer.Option("tiny", "--profile", "-p", help="Profile for both servers: tiny (a sweep of "
                                      "rates) or small (one fixed-count run at the baseline's saturation)."),
          quick: bool = typer.Option(False, "--quick", help="4 requests per rate (a smoke check)."),
          rates: Optional[str] = typer.Option(None, "--rates", help="Multiples of the baseline's saturation rate "
                                              "(default: tiny 0.5,1,2; small 1)."),
          requests: Optional[int] = typer.Option(None, "--requests", help="Most requests per rate (default: tiny 16, small 4)."),
          duration: Optional[float] = typer.Option(None, "--duration", help="No request is sent later than this "
                                                   "many seconds after a rate's first (default: tiny 100, small 300)."),
          candidates: Optional[int] = typer.Option(None, "--candidates", help="Candidates, both servers (default 2)."),
          free_text_tokens: Optional[int] = typer.Option(None, "--free-text-tokens",
                                                         help="Cap of the baseline's free-text turns, both servers "
                                                              "(default: tiny 32; small the profile's)."),
          soak: Optional[int] = typer.Option(None, "--soak", help="Instead: a bounded soak of kbridge serve alone, "
                                             "this many requests (half large uploads), peak RSS per quarter."),
          json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
          save: bool = typer.Option(True, "--save/--no-save", help="Write benchmarks/results/serve[_PROFILE].json.")):
    """Latency under open-loop Poisson load: kbridge serve vs a one-at-a-time reference-pattern server."""
    from kbridge.benchmarks import serve as q
    from kbridge.engine.models import quiet_libraries

    quiet_libraries()
    if soak:
        from kbridge.benchmarks import serve_soak

        _finish(serve_soak.run(profile, soak), json_path, save)
        return
    mult = tuple(float(x) for x in rates.split(",")) if rates else None
    _finish(q.run(profile, quick, mult, requests, candidates, free_text_tokens, duration), json_path, save)


@bench_app.command("gpu")
def gpu(quick: bool = typer.Option(False, "--quick", help="Batches 1 / 2, torch.compile at batch 2, no refiner / whole-sample rows."),
        device: str = typer.Option("cuda:0", "--device", help="The GPU to measure."),
        json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
        rows: Optional[Path] = typer.Option(None, "--rows", help="Append each row to this JSON-lines file the "
                                            "moment it is measured."),
        budget: float = typer.Option(1e9, "--budget", help="Seconds for all sections; what will not fit is skipped."),
        save: bool = typer.Option(True, "--save/--no-save", help="Write benchmarks/results/gpu.json.")):
    """Per-stage GPU speed on full-size random twins (SDXL, Qwen2-VL-7B, CLIP ViT-L/14, MaxSim)."""
    from kbridge.cli.common import fail
    from kbridge.engine.errors import Unavailable
    from kbridge.engine.models import quiet_libraries

    quiet_libraries()
    try:
        from kbridge.benchmarks.gpu import run

        report = run(quick=quick, device=device, rows_path=rows, budget_s=budget)
    except Unavailable as e:
        fail(str(e))
    _finish(report, json_path, save)
@bench_app.command("report-page")
def report_page(samples: str = typer.Option("1000,10000", "--samples", help="Run sizes, comma-separated."),
                browser: bool = typer.Option(True, "--browser/--no-browser",
                                             help="Also time a headless Chromium opening the page."),
                json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
                save: bool = typer.Option(True, "--save/--no-save", help="Write benchmarks/results/report-page.json.")):
    """kbridge report on a synthetic run of 1k / 10k samples: build time, page size, time to open."""
    from kbridge.benchmarks.report_page import run

    _finish(run(tuple(int(s) for s in samples.split(",") if s.strip()), browser), json_path, save)
