"""The render stage on the tiny SDXL twin: every generated candidate still without an image gets
the image of its own prompt and seed (a candidate already rendered keeps its image), and each row
is charged the UNet evaluations and VAE decodes of its own candidates."""
import dataclasses

import numpy as np
import pytest
from PIL import Image

from kbridge.engine.stages.write import image_candidates


def test_render_fills_each_pending_candidate_with_its_seeded_image_and_counts_its_work(cfg, stage_ctx, call_stage,
                                                                                      loaded_rows, demo_set):
    first, second = [i for i, m in sorted(demo_set.missing.items()) if m == "image"][:2]
    a, b = loaded_rows([first, second], turn=2)
    a = a.replace(candidates=tuple(image_candidates(a.sample, ["a red cup on a table", "a dog on grass"], cfg.run.seed)))
    done = Image.new("RGB", (cfg.generation.width, cfg.generation.height), "blue")
    c0, c1 = image_candidates(b.sample, ["a blue boat", "a green hill"], cfg.run.seed)
    b = b.replace(candidates=(dataclasses.replace(c0, image=done), c1))
    ctx = stage_ctx()
    gen = ctx.generator
    u0, v0 = gen.counters.unet_evals, gen.counters.vae_decodes
    out = call_stage("render", [a, b], ctx)
    used = (gen.counters.unet_evals - u0, gen.counters.vae_decodes - v0)

    ra, rb = out
    assert [r.sample_id for r in out] == [a.sample_id, b.sample_id] and not any(r.error for r in out)
    assert all(c.image.size == (cfg.generation.width, cfg.generation.height) for r in out for c in r.candidates)
    assert rb.candidates[0].image is done  # already rendered: not rendered again
    assert [(c.prompt, c.seed) for c in ra.candidates] == [(c.prompt, c.seed) for c in a.candidates]
    # the image is the one its prompt and seed give alone (batching moves pixels by float noise only)
    alone = gen.render([rb.candidates[1].prompt], [rb.candidates[1].seed])[0]
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(rb.candidates[1].image, np.int16)).max() <= 2
    # work split by candidates rendered: two for the first row, one for the second
    assert (ra.unet_evals + rb.unet_evals, ra.vae_decodes + rb.vae_decodes) == pytest.approx(used)
    per = rb.unet_evals
    assert ra.unet_evals == pytest.approx(2 * per) and 2 * cfg.generation.steps - 2 <= per <= 2 * (cfg.generation.steps + 1)
    assert (ra.vae_decodes, rb.vae_decodes) == (2, 1)
