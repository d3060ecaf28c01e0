"""Question ``runners``: how much faster are compiled runners than torch eager, per model and for
diffusion per candidate end to end?

Per model: the same IO module and the same inputs through torch eager, torch.compile (inductor;
compile time reported apart) and onnxruntime (CPU EP here), with the same intra-op threads and
inference mode; medians after warm-up, ``speedup_vs_eager`` between rows of one run, and the
max abs difference to eager. "clip scoring" is one batch of images plus one batch of texts through
both towers. "diffusion per candidate" renders candidates with SDXLGenerator (base + refiner,
the profile's steps) with its UNets / VAE / text encoders swapped for runners.
Uses the ``small`` profile when this checkout has it, else ``tiny`` (the report says which).
"""
from __future__ import annotations

import dataclasses
import os
import time

import torch

from kbridge.benchmarks.harness import stamp, summarize
from kbridge.engine.config import PipelineConfig, build_config
from kbridge.engine.profiles import PROFILES

COLUMNS = ["name", "model", "backend", "batch", "ms_p50", "ms_p95", "speedup_vs_eager", "max_abs_diff",
           "first_call_s"]
MODELS = ("sdxl_base.unet", "sdxl_refiner.unet", "sdxl_base.vae_decoder", "sdxl_base.text_encoder",
          "sdxl_base.text_encoder_2", "clip.vision", "clip.text")


def _batch(cfg: PipelineConfig, name: str) -> dict[str, int]:
    g = cfg.generation
    if name.endswith(".unet"):
        return {"batch": 2 * g.batch_size}  # one CFG step over a candidate batch
    if name.startswith("clip"):
        return {"batch": 16, "seq": 20} if name == "clip.text" else {"batch": 16}
    return {"batch": g.batch_size}


def _row(name: str, model: str, backend: str, batch: int, stats, ref_ms: float | None, diff: float | None,
         first: float | None) -> dict:
    ms = stats.median * 1e3
    return {"name": name, "model": model, "backend": backend, "batch": batch, "ms_p50": ms,
            "ms_p95": stats.p95 * 1e3, "speedup_vs_eager": (ref_ms / ms) if ref_ms else 1.0,
            "max_abs_diff": diff, "first_call_s": first}


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _interleaved(fns: dict, repeat: int) -> dict:
    """Median-ready timings of several callables, taken round-robin (A B C A B C …) so that machine
    noise lands on every backend alike; one untimed warm-up call each first."""
    for fn in fns.values():
        fn()
    times: dict = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: summarize(v) for k, v in times.items()}


def bench_models(cfg: PipelineConfig, backends: tuple[str, ...], repeat: int) -> list[dict]:
    from kbridge.engine.runtime import make_runner
    from kbridge.export.parts import load_parts

    parts = load_parts(cfg, list(MODELS))
    runners, outs, first = {}, {}, {}
    for be in backends:  # eager and onnxruntime runners exist before anything is compiled
        for name, ex in parts.items():
            x = ex.spec.sample(_batch(cfg, name), seed=1)
            t0 = time.perf_counter()
            run = make_runner(ex, cfg, backend=be)
            outs[name, be] = run(x)  # first call: compiles (torch.compile) or warms the session
            first[name, be] = time.perf_counter() - t0
            runners[name, be] = (run, x)
    rows = []
    for name, ex in parts.items():
        st = _interleaved({be: (lambda r=runners[name, be]: r[0](r[1])) for be in backends}, repeat)
        eager = st["torch"].median * 1e3
        for be in backends:
            batch = runners[name, be][1][ex.spec.inputs[0].name].shape[0]
            rows.append(_row(f"{name} [{be}]", name, be, batch, st[be], eager,
                             None if be == "torch" else _max_diff(outs[name, be], outs[name, "torch"]),
                             first[name, be]))
    # CLIP scoring = one image batch + one text batch through both towers
    def score(be):
        (rv, xv), (rt, xt) = runners["clip.vision", be], runners["clip.text", be]
        return lambda: (rv(xv), rt(xt))

    st = _interleaved({be: score(be) for be in backends}, repeat)
    rows += [_row(f"clip scoring [{be}]", "clip", be, 16, st[be], st["torch"].median * 1e3, None, None)
             for be in backends]
    order = {m: i for i, m in enumerate((*MODELS, "clip"))}
    return sorted(rows, key=lambda r: (order[r["model"]], backends.index(r["backend"])))


def bench_diffusion(cfg: PipelineConfig, backends: tuple[str, ...], candidates: int, repeat: int) -> list[dict]:
    from kbridge.engine.models import load_generator

    prompts = [f"a photo of a red {w} on a wooden table" for w in ("cup", "clock", "camera", "horse", "coin",
                                                                  "rocket", "tree")][:candidates]
    seeds = list(range(len(prompts)))
    gens, imgs, first = {}, {}, {}
    for be in backends:
        t0 = time.perf_counter()
        gens[be] = load_generator(dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, backend=be)))
        imgs[be] = torch.stack([torch.tensor(list(i.getdata()), dtype=torch.float32)
                                for i in gens[be].render(prompts, seeds)])
        first[be] = time.perf_counter() - t0
    st = _interleaved({be: (lambda g=gens[be]: g.render(prompts, seeds)) for be in backends}, repeat)
    n = len(prompts)
    per = {be: dataclasses.replace(st[be], median=st[be].median / n, p95=st[be].p95 / n) for be in backends}
    return [_row(f"diffusion per candidate [{be}]", "sdxl base+refiner", be, n, per[be], per["torch"].median * 1e3,
                 None if be == "torch" else float((imgs[be] - imgs["torch"]).abs().max()), first[be])
            for be in backends]


def run(profile: str | None = None, quick: bool = False, threads: int = 0, compile: bool = True) -> dict:
    profile = profile or ("small" if "small" in PROFILES else "tiny")
    cfg = build_config(profile, overrides={"run": {"threads": threads}} if threads else None)
    if threads:
        torch.set_num_threads(threads)
    repeat = 5 if quick else 10
    # compile in this process, one thread: no inductor worker pool left running beside later rows
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    rows = bench_diffusion(cfg, ("torch", "onnx"), cfg.generation.batch_size if not quick else 2, 3 if quick else 5)
    rows = bench_models(cfg, ("torch", "onnx", "compile") if compile else ("torch", "onnx"), repeat) + rows
    notes = [f"profile {profile}: {cfg.generation.height}x{cfg.generation.width}, {cfg.generation.steps} steps, "
             f"refiner {'on' if cfg.generation.refiner else 'off'}; threads {torch.get_num_threads()} for torch "
             "and onnxruntime; onnxruntime CPU execution provider, float32.",
             "first_call_s: runner creation + first call (export when not cached, compile, session warm-up); "
             "excluded from the medians.",
             "Backends are timed round-robin within each row group (A B C A B C …), so machine noise "
             "lands on all of them alike.",
             "max_abs_diff: to the eager output of the same inputs (images: 0-255 pixel values)."]
    return stamp({"question": "runners", "title": "Compiled runners vs torch eager (ms; speedup_vs_eager)",
                  "profile": profile, "columns": COLUMNS, "rows": rows, "notes": notes})
