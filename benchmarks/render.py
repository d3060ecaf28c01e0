"""Question ``render``: which exact CPU speed-ups pay for the render stage, and what does a lower
precision cost in fidelity? ``kbridge bench render``.

Every variant renders the same candidates (prompts, per-candidate seeds, the profile's steps,
refiner and size) with ``SDXLGenerator``, timed round-robin over the variants (A B C …, then
C B A …) after one untimed warm-up call each (exports, compilation, kernel selection), with the
machine's load recorded per repetition. Rows:

- exact variants (float32, the same arithmetic up to summation order): the UNet micro-batch size
  (``generation.batch_size``), render lanes (``generation.split``), channels-last, the torch
  thread count, torch.compile (inductor), onnxruntime. They change the images only by float
  rounding; the table gives the largest pixel difference to the reference row (the profile's
  settings) against the cross-setting rule (2 grey levels, tests/promise.py).
- the precision rung (bfloat16 UNets / VAE / text encoders; fast on CPUs with AVX512-BF16 or AMX),
  in its own table with its fidelity to the exact run: image PSNR, largest pixel difference, and
  best-candidate agreement (for each candidate's prompt as the query, the CLIP-best image among the
  candidates, compared with the exact run's choice).
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time

import numpy as np
import torch

from kbridge.benchmarks.harness import LOAD_KEY, load_probe, loaded, row_load, stamp
from kbridge.engine.config import PipelineConfig, build_config

PROMPTS = tuple(f"a photo of a {w} on a wooden table" for w in ("red cup", "clock", "camera", "brown horse",
                                                                   "gold coin", "toy rocket", "small tree"))
GREY_LEVELS = 2
"""The cross-setting rule's image tolerance (tests/promise.py)."""


def variants(cfg: PipelineConfig, compile: bool = True) -> list[tuple[str, dict, bool]]:
    """(name, overrides over the profile, exact). The first is the reference: the profile itself."""
    b, lanes = cfg.generation.batch_size, cfg.generation.split
    out = [(f"profile settings (batch {b}{f', split {lanes}' if lanes > 1 else ''})", {}, True)]
    out += [(f"batch {n}", {"generation": {"batch_size": n}}, True) for n in (1, 2, 7) if n != b]
    out += [("split 2 (two 1-thread lanes)", {"generation": {"split": 2}}, True)] if lanes == 1 else \
        [("split 1 (one lane)", {"generation": {"split": 1}}, True)]
    out += [("channels-last", {"generation": {"channels_last": True}}, True),
            ("1 torch thread", {"run": {"threads": 1}, "generation": {"split": 1}}, True),
            ("onnxruntime", {"runtime": {"backend": "onnx"}}, True)]
    if compile:
        out.append(("torch.compile (inductor)", {"runtime": {"backend": "compile"}}, True))
    out.append(("bfloat16 (precision rung)", {"generation": {"dtype": "bfloat16"}}, False))
    return out


def _merge(cfg: PipelineConfig, over: dict) -> PipelineConfig:
    return dataclasses.replace(cfg, **{k: dataclasses.replace(getattr(cfg, k), **v) for k, v in over.items()})


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(i.convert("RGB"), dtype=np.float64) for i in images])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def best_choices(scorer, images, prompts) -> list[int]:
    """For each prompt as the query, the index of the CLIP-best image."""
    sims = scorer.embed_texts(list(prompts)) @ scorer.embed_images(images).T  # [Q, N] cosine
    return [int(i) for i in sims.argmax(-1).tolist()]


def run(profile: str = "small", candidates: int = 7, repeats: int = 3, compile: bool = True,
        only: tuple[str, ...] = (), allow_loaded: bool = False) -> dict:
    from kbridge.engine.models import load_generator, load_scorer

    base = build_config(profile)
    default_threads = torch.get_num_threads()
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(candidates)]
    seeds = list(range(1000, 1000 + candidates))
    chosen = [v for v in variants(base, compile) if not only or v[0] == variants(base)[0][0]
              or any(o in v[0] for o in only)]
    gens, first, images = {}, {}, {}
    for name, over, _ in chosen:
        cfg = _merge(base, over)
        torch.set_num_threads(cfg.run.threads or default_threads)
        t0 = time.perf_counter()
        gens[name] = (load_generator(cfg), cfg.run.threads or default_threads)
        images[name] = gens[name][0].render(prompts, seeds)  # warm-up: exports, compiles, first kernels
        first[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {n: [] for n, _, _ in chosen}
    loads: dict[str, list[dict]] = {n: [] for n, _, _ in chosen}
    names = [n for n, _, _ in chosen]
    for rep in range(repeats):
        for name in (names if rep % 2 == 0 else names[::-1]):
            gen, threads = gens[name]
            torch.set_num_threads(threads)
            start = load_probe()
            t0 = time.perf_counter()
            gen.render(prompts, seeds)
            times[name].append((time.perf_counter() - t0) / candidates)
            loads[name].append(row_load(start, load_probe(), threads))
    torch.set_num_threads(default_threads)
    scorer = load_scorer(base)
    ref_name = names[0]
    ref_px, ref_best = _pixels(images[ref_name]), best_choices(scorer, images[ref_name], prompts)
    ref_s = statistics.median(times[ref_name])
    rows, rung = [], []
    for name, _, exact in chosen:
        px = _pixels(images[name])
        best = best_choices(scorer, images[name], prompts)
        s = statistics.median(times[name])
        row = {"name": name, "s_per_candidate": s, "s_min": min(times[name]), "s_max": max(times[name]),
               "repeats": repeats, "first_call_s": first[name], "max_grey_diff": float(np.abs(px - ref_px).max()),
               "psnr_db": psnr(px, ref_px), "best_agreement": sum(a == b for a, b in zip(best, ref_best)) / len(best),
               LOAD_KEY: loads[name]}
        row["within_cross_setting_rule"] = "yes" if row["max_grey_diff"] <= GREY_LEVELS else "no"
        quiet = allow_loaded or not (loaded(row) or loaded(rows[0] if rows else row))
        row["speedup_vs_profile"] = ref_s / s if quiet else None
        (rows if exact else rung).append(row)
    cols = ["name", "s_per_candidate", "s_min", "s_max", "speedup_vs_profile", "max_grey_diff",
            "within_cross_setting_rule", "first_call_s"]
    g = base.generation
    notes = [f"{profile} profile: {candidates} candidates of {g.height}x{g.width}, {g.steps} steps, refiner "
             f"{'on' if g.refiner else 'off'}, guidance {g.guidance}; torch threads {default_threads} unless the "
             "row says otherwise; times per candidate, median of the repetitions (min / max beside)",
             f"max_grey_diff: largest pixel difference (0-255) to the first row's images; the cross-setting rule "
             f"allows {GREY_LEVELS}",
             "best_agreement (precision rung): for each candidate's prompt as the query, whether the CLIP-best "
             "image among the candidates is the exact run's"]
    exact_ok = [r for r in rows[1:] if r["within_cross_setting_rule"] == "yes" and r["speedup_vs_profile"]]
    if exact_ok:
        best = max(exact_ok, key=lambda r: r["speedup_vs_profile"])
        notes.append(f"fastest exact variant within the rule: {best['name']}, {best['speedup_vs_profile']:.2f}x "
                     "per candidate over the profile's settings")
    if any(loaded(r) for r in rows + rung):
        notes.append("LOADED: " + ", ".join(r["name"] for r in rows + rung if loaded(r)) + " ran on a loaded "
                     "machine (harness.is_loaded); their ratios are left out")
    return stamp({
        "question": "render", "title": f"Render stage on CPU: exact speed-ups and the precision rung ({profile})",
        "how": f"kbridge bench render --profile {profile} --candidates {candidates} --repeats {repeats}"
               + ("" if compile else " --no-compile"),
        "profile": profile, "columns": cols, "rows": rows,
        "tables": [{"title": "Precision rung: speed and fidelity to the exact (first-row) run",
                    "columns": ["name", "s_per_candidate", "s_min", "s_max", "speedup_vs_profile", "psnr_db",
                                "max_grey_diff", "best_agreement", "first_call_s"], "rows": rung}] if rung else [],
        "notes": notes,
    })
