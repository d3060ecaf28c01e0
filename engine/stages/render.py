"""Render: the generated image candidates of image-missing rows, on this worker's generator
replica (one worker per device given to diffusion; all pull from the render queue). UNet
evaluations and VAE decodes are measured around this call, on the worker's own thread, so
concurrent workers never see each other's counts. Rows with ``steps`` (a served request's
override) are rendered with that many denoising steps.

With ``[generation] refine_top = K`` (K > 0, fewer than a row's candidates, refiner on): the base
runs for every candidate, its latents are previewed cheaply, the candidates are pre-ranked by
the scorer's semantic score of the preview against the sample's text, and only the top K are
refined and fully decoded (``Candidate.refined``); the others keep their preview image.
"""
from __future__ import annotations

from dataclasses import replace

from kbridge.engine import faults
from kbridge.engine.errors import KbridgeError
from kbridge.engine.rows import Row


def needs_render(row: Row, cfg=None) -> bool:
    return row.missing == "image" and any(c.source == "generated" and c.image is None for c in row.candidates)


def _stoppable(gen) -> bool:
    import inspect

    return "stop" in inspect.signature(gen.render).parameters


def _pending(rows: list[Row]) -> list[tuple[int, int]]:
    return [(i, j) for i, r in enumerate(rows) for j, c in enumerate(r.candidates)
            if c.source == "generated" and c.image is None]


def _selective(rows: list[Row], ctx) -> bool:
    g, k = ctx.cfg.generation, ctx.cfg.generation.refine_top
    return k > 0 and getattr(ctx.generator, "refiner", None) is not None and g.high_noise_frac < 1.0 \
        and any(sum(1 for fi, _ in _pending(rows) if fi == i) > k for i in range(len(rows)))


def render(rows: list[Row], ctx) -> list[Row]:
    if _selective(rows, ctx):
        return _render_top(rows, ctx)
    gen = ctx.generator
    flat = _pending(rows)
    u0, v0 = gen.counters.unet_evals, gen.counters.vae_decodes
    images = [None] * len(flat)
    by_steps: dict = {}  # a served request may ask for other steps (Row.steps): rendered apart
    for n, (i, _) in enumerate(flat):
        by_steps.setdefault(rows[i].steps, []).append(n)
    for steps, ns in by_steps.items():
        kw = {} if steps is None else {"steps": steps}
        if ctx.cancelled is not None and _stoppable(gen):  # all rows cancelled: stop between denoising steps
            mine = [rows[i] for i in {flat[n][0] for n in ns}]
            kw["stop"] = lambda mine=mine: all(ctx.cancelled(r) for r in mine)
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


def _render_top(rows: list[Row], ctx) -> list[Row]:
    gen, g, scorer = ctx.generator, ctx.cfg.generation, ctx.models.scorer
    if scorer is None:
        raise KbridgeError("generation.refine_top needs the scorer while rendering: use the fused schedule")
    flat = _pending(rows)
    prompts = [rows[i].candidates[j].prompt for i, j in flat]
    seeds = [rows[i].candidates[j].seed for i, j in flat]
    c0 = (gen.counters.unet_evals, gen.counters.vae_decodes, gen.counters.preview_decodes)
    lat = gen.base_latents(prompts, seeds)                       # [N, 4, H/8, W/8], every candidate
    base_unet = (gen.counters.unet_evals - c0[0]) / max(1, len(flat))
    previews = gen.preview(lat, g.preview)
    per_preview = (gen.counters.preview_decodes - c0[2]) / max(1, len(flat))
    # pre-rank each row's candidates: cosine of the preview against the sample's text, in [0, 1]
    texts = scorer.embed_texts([rows[i].sample.text or "" for i in range(len(rows))])   # [R, D]
    sem = (scorer.embed_images(previews) * texts[[i for i, _ in flat]]).sum(-1).clamp(0, 1).tolist()
    keep = []
    for i in range(len(rows)):
        mine = [f for f, (fi, _) in enumerate(flat) if fi == i]
        keep += sorted(mine, key=lambda f: (-sem[f], f))[:g.refine_top]
    keep.sort()
    u1, v1 = gen.counters.unet_evals, gen.counters.vae_decodes
    refined = gen.refine(lat[keep], [prompts[f] for f in keep], [seeds[f] for f in keep])
    per_ref_unet = (gen.counters.unet_evals - u1) / max(1, len(keep))
    per_ref_vae = (gen.counters.vae_decodes - v1) / max(1, len(keep))
    images = dict(enumerate(previews)) | dict(zip(keep, refined))
    new = [list(r.candidates) for r in rows]
    for f, (i, j) in enumerate(flat):
        new[i][j] = replace(new[i][j], image=images[f], refined=f in keep)
    out = []
    for i, r in enumerate(rows):
        k = sum(1 for fi, _ in flat if fi == i)
        kr = sum(1 for f in keep if flat[f][0] == i)
        out.append(r.replace(candidates=tuple(new[i]), unet_evals=r.unet_evals + base_unet * k + per_ref_unet * kr,
                             vae_decodes=r.vae_decodes + per_ref_vae * kr,
                             preview_decodes=r.preview_decodes + per_preview * k))
    return out
