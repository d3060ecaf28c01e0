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

from kbridge.benchmarks.harness import stamp, time_it
from kbridge.engine.config import PROFILES, PipelineConfig, build_config

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


def bench_models(cfg: PipelineConfig, backends: tuple[str, ...], repeat: int) -> list[dict]:
    from kbridge.engine.runtime import make_runner
    from kbridge.export.parts import load_parts

    rows = []
    parts = load_parts(cfg, list(MODELS))
    runners_by_model, refs, eager_ms = {}, {}, {}
    # backend-major order: eager and onnxruntime rows are measured before anything is compiled,
    # so no compile work overlaps an eager measurement
    for be in backends:
        for name, ex in parts.items():
            x = ex.spec.sample(_batch(cfg, name), seed=1)
            t0 = time.perf_counter()
            run = make_runner(ex, cfg, backend=be)
            out = run(x)  # first call: compiles (torch.compile) or warms the session
            first = time.perf_counter() - t0
            st = time_it(lambda: run(x), warmup=1, repeat=repeat)
            if be == "torch":
                refs[name], eager_ms[name] = out, st.median * 1e3
            rows.append(_row(f"{name} [{be}]", name, be, x[ex.spec.inputs[0].name].shape[0], st, eager_ms[name],
                             None if be == "torch" else _max_diff(out, refs[name]), first))
            runners_by_model[(name, be)] = (run, x)
    # CLIP scoring = one image batch + one text batch through both towers
    for be in backends:
        if ("clip.vision", be) not in runners_by_model:
            continue
        (rv, xv), (rt, xt) = runners_by_model[("clip.vision", be)], runners_by_model[("clip.text", be)]
        st = time_it(lambda: (rv(xv), rt(xt)), warmup=1, repeat=repeat)
        eager = next((r for r in rows if r["name"] == "clip scoring [torch]"), None)
        rows.append(_row(f"clip scoring [{be}]", "clip", be, 16, st, eager["ms_p50"] if eager else None, None, None))
    order = {m: i for i, m in enumerate((*MODELS, "clip"))}
    return sorted(rows, key=lambda r: (order[r["model"]], backends.index(r["backend"])))


def bench_diffusion(cfg: PipelineConfig, backends: tuple[str, ...], candidates: int, repeat: int) -> list[dict]:
    from kbridge.engine.models import load_generator

    prompts = [f"a photo of a red {w} on a wooden table" for w in ("cup", "clock", "camera", "horse", "coin",
                                                                  "rocket", "tree")][:candidates]
    seeds = list(range(len(prompts)))
    rows, ref_imgs, eager = [], None, None
    for be in backends:
        t0 = time.perf_counter()
        gen = load_generator(dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, backend=be)))
        imgs = gen.render(prompts, seeds)
        first = time.perf_counter() - t0
        st = time_it(lambda: gen.render(prompts, seeds), warmup=0, repeat=repeat)
        per = dataclasses.replace(st, median=st.median / len(prompts), p95=st.p95 / len(prompts))
        arr = torch.stack([torch.tensor(list(i.getdata()), dtype=torch.float32) for i in imgs])
        diff = None if ref_imgs is None else float((arr - ref_imgs).abs().max())
        if be == "torch":
            ref_imgs, eager = arr, per.median * 1e3
        rows.append(_row(f"diffusion per candidate [{be}]", "sdxl base+refiner", be, len(prompts), per, eager, diff,
                         first))
    return rows


def run(profile: str | None = None, quick: bool = False, threads: int = 0, compile: bool = True) -> dict:
    profile = profile or ("small" if "small" in PROFILES else "tiny")
    cfg = build_config(profile, overrides={"run": {"threads": threads}} if threads else None)
    if threads:
        torch.set_num_threads(threads)
    repeat = 5 if quick else 10
    # compile in this process, one thread: no inductor worker pool left running beside later rows
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    rows = bench_diffusion(cfg, ("torch", "onnx"), cfg.generation.batch_size if not quick else 2, 2 if quick else 3)
    rows = bench_models(cfg, ("torch", "onnx", "compile") if compile else ("torch", "onnx"), repeat) + rows
    notes = [f"profile {profile}: {cfg.generation.height}x{cfg.generation.width}, {cfg.generation.steps} steps, "
             f"refiner {'on' if cfg.generation.refiner else 'off'}; threads {torch.get_num_threads()} for torch "
             "and onnxruntime; onnxruntime CPU execution provider, float32.",
             "first_call_s: runner creation + first call (export when not cached, compile, session warm-up); "
             "excluded from the medians.",
             "max_abs_diff: to the eager output of the same inputs (images: 0-255 pixel values)."]
    return stamp({"question": "runners", "title": "Compiled runners vs torch eager (ms; speedup_vs_eager)",
                  "profile": profile, "columns": COLUMNS, "rows": rows, "notes": notes})
