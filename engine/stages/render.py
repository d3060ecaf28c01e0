"""Render: the generated image candidates of image-missing rows, on this worker's generator
replica (one worker per device given to diffusion; all pull from the render queue). UNet
evaluations and VAE decodes are measured around this call, on the worker's own thread, so
concurrent workers never see each other's counts. Rows with ``extra["steps"]`` (a served
request's override) are rendered with that many denoising steps."""
from __future__ import annotations

from dataclasses import replace

from kbridge.engine import faults
from kbridge.engine.rows import Row


def needs_render(row: Row, cfg=None) -> bool:
    return row.missing == "image" and any(c.source == "generated" and c.image is None for c in row.candidates)


def render(rows: list[Row], ctx) -> list[Row]:
    gen = ctx.generator
    flat = [(i, j) for i, r in enumerate(rows) for j, c in enumerate(r.candidates)
            if c.source == "generated" and c.image is None]
    u0, v0 = gen.counters.unet_evals, gen.counters.vae_decodes
    images = [None] * len(flat)
    by_steps: dict = {}  # a served request may ask for other steps (extra["steps"]): rendered apart
    for n, (i, _) in enumerate(flat):
        by_steps.setdefault(rows[i].extra.get("steps"), []).append(n)
    for steps, ns in by_steps.items():
        kw = {} if steps is None else {"steps": steps}
        done = gen.render([rows[flat[n][0]].candidates[flat[n][1]].prompt for n in ns],
                          [rows[flat[n][0]].candidates[flat[n][1]].seed for n in ns], **kw)
        for n, im in zip(ns, done):
            images[n] = im
    faults.check("render")
    n = max(1, len(images))
    per_unet, per_vae = (gen.counters.unet_evals - u0) / n, (gen.counters.vae_decodes - v0) / n
    new = [list(r.candidates) for r in rows]
    for (i, j), im in zip(flat, images):
        new[i][j] = replace(new[i][j], image=im)
    out = []
    for i, r in enumerate(rows):
        k = sum(1 for fi, _ in flat if fi == i)
        out.append(r.replace(candidates=tuple(new[i]), unet_evals=r.unet_evals + per_unet * k,
                             vae_decodes=r.vae_decodes + per_vae * k))
    return out
