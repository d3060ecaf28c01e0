"""Question ``cheff``: how much does batching Cheff's report → X-ray sampling across candidates and
samples gain over the reference's pattern (one X-ray at a time, batch 1)?

Both rows render the same reports with the same per-candidate seeds, models, steps and threads,
after a warm-up; the batched X-rays are checked against the one-at-a-time ones (they must agree:
every candidate's generator drives its own stochastic DDIM steps). Counted figures (UNet
evaluations and VAE decodes per X-ray) are the same in both rows by construction.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kbridge.benchmarks.harness import stamp, time_it
from kbridge.engine import zoo
from kbridge.engine.config import build_config

COLUMNS = ["name", "batch", "xrays", "s_per_xray_p50", "xrays_per_s", "unet_evals_per_xray", "vae_decodes_per_xray",
           "speedup_vs_baseline"]
REPORTS = ["Heart size normal. Lungs clear. No effusion.", "Small left pleural effusion.",
           "Cardiomegaly without acute disease.", "Right lower lobe opacity, likely pneumonia.",
           "Small right apical pneumothorax.", "Left upper lobe nodule.", "Bilateral effusions with mild edema."]


def run(profile: str = "tiny", candidates: int = 7, samples: int = 2, steps: int | None = None,
        repeat: int = 3) -> dict:
    from kbridge.engine.generate.cheff import CheffGenerator

    cfg = build_config(profile, overrides={"run": {"domain": "chest_xray"}})
    med = dataclasses.replace(cfg.medical, steps=steps or cfg.medical.steps, batch_size=candidates * samples)
    prompts = [REPORTS[(i // candidates) % len(REPORTS)] for i in range(candidates * samples)]
    seeds = list(range(1000, 1000 + len(prompts)))
    path = zoo.resolve(med.generator, cfg)
    rows, images = [], {}
    for name, batch in (("baseline: one X-ray at a time (reference)", 1), ("kbridge: batched", len(prompts))):
        gen = CheffGenerator(path, dataclasses.replace(med, batch_size=batch))
        st = time_it(lambda: images.__setitem__(name, gen.render(prompts, seeds)), warmup=1, repeat=repeat)
        n = gen.counters.images
        rows.append({"name": name, "batch": batch, "xrays": len(prompts), "s_per_xray_p50": st.median / len(prompts),
                     "xrays_per_s": len(prompts) / st.median, "unet_evals_per_xray": gen.counters.unet_evals / n,
                     "vae_decodes_per_xray": gen.counters.vae_decodes / n})
    for r in rows:
        r["speedup_vs_baseline"] = rows[0]["s_per_xray_p50"] / r["s_per_xray_p50"]
    a, b = (np.stack([np.asarray(im, dtype=np.int16) for im in images[r["name"]]]) for r in rows)
    diff = int(np.abs(a - b).max())
    return stamp({"question": "cheff", "title": f"Cheff report → X-ray, {profile} twin, {med.steps} DDIM steps, "
                  f"eta {med.eta}, {samples} samples × {candidates} candidates", "columns": COLUMNS, "rows": rows,
                  "notes": [f"batched vs one-at-a-time X-rays: max difference {diff} (8-bit levels); each "
                            "candidate's generator drives its initial noise and every stochastic step",
                            f"output {gen.image_size}² grayscale; no classifier-free guidance (Cheff's setting)"]})
