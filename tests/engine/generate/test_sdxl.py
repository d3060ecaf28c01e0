import numpy as np
import pytest


@pytest.fixture(scope="module")
def gen(engine):
    return engine.models().generators[0]


def _a(img):
    return np.asarray(img).astype(np.int16)


def test_same_seed_same_image_and_candidates_differ(gen):
    a = gen.render(["a red cup", "a red cup"], [11, 12])
    b = gen.render(["a red cup", "a red cup"], [11, 12])
    assert all(np.array_equal(_a(x), _a(y)) for x, y in zip(a, b))
    # same prompt, different (sample, candidate) seeds → different images
    assert np.abs(_a(a[0]) - _a(a[1])).mean() > 5.0


def test_batched_equals_one_by_one(gen):
    prompts, seeds = ["a cat", "a dog on grass", "a rocket"], [1, 2, 3]
    together = gen.render(prompts, seeds)
    alone = [gen.render([p], [s])[0] for p, s in zip(prompts, seeds)]
    for t, a in zip(together, alone):
        assert np.abs(_a(t) - _a(a)).max() <= 2  # float batching noise, in 8-bit levels


def test_counts_unet_evaluations_and_decodes(gen):
    c = gen.cfg
    u0, v0 = gen.counters.unet_evals, gen.counters.vae_decodes
    imgs = gen.render(["a", "b", "c"], [1, 2, 3])
    assert imgs[0].size == (c.width, c.height)
    # base + refiner together run the schedule once, with classifier-free guidance doubling the batch
    base_steps = int(c.steps * c.high_noise_frac)
    evals = gen.counters.unet_evals - u0
    assert 3 * 2 * c.steps - 6 <= evals <= 3 * 2 * (c.steps + 1), evals
    assert evals >= 3 * 2 * base_steps
    assert gen.counters.vae_decodes - v0 == 3


def test_without_refiner_the_base_runs_the_whole_schedule(cfg):
    import dataclasses

    from kbridge.engine import zoo
    from kbridge.engine.generate.sdxl import SDXLGenerator

    g = dataclasses.replace(cfg.generation, refiner=False)
    gen = SDXLGenerator(zoo.resolve("sdxl_base", cfg), None, g)
    gen.render(["a cup"], [5])
    assert gen.counters.unet_evals == 2 * g.steps
