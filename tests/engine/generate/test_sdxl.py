"""The SDXL generator on its tiny twin: a seed gives one image, batched equals one by one, UNet
evaluations and VAE decodes counted, the base alone without a refiner, and the memory and speed
options (fused QKV, channels-last, VAE slicing) rendering the same images."""
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


def test_memory_and_speed_options_render_the_same_images(cfg):
    import dataclasses

    import torch

    from kbridge.engine import zoo
    from kbridge.engine.generate.sdxl import SDXLGenerator

    base, refiner = zoo.resolve("sdxl_base", cfg), zoo.resolve("sdxl_refiner", cfg)
    g = dataclasses.replace(cfg.generation, vae_slicing=True, channels_last=True, fuse_qkv=True, vae=str(base / "vae"))
    gen = SDXLGenerator(base, refiner, g)
    assert gen.options == ["fuse_qkv", "channels_last", "vae_slicing"]
    assert gen.base.vae.use_slicing and gen.refiner.vae is gen.base.vae
    assert any(getattr(m, "fused_projections", False) for m in gen.base.unet.modules())
    conv = gen.base.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    ref = SDXLGenerator(base, refiner, cfg.generation).render(["a red cup", "a dog"], [5, 6])
    got = gen.render(["a red cup", "a dog"], [5, 6])
    for a, b in zip(ref, got):  # the same images within float noise (fused matmuls, another layout)
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 3


def test_split_lanes_render_the_same_images_in_order_and_count_them(cfg, gen):
    """``generation.split = 2``: 5 candidates as 2 + 2 on two 1-thread lanes, then 1 on both threads;
    each image is its seed's (in order, within the cross-setting rule), every UNet evaluation and
    decode is counted once, the caller's thread count comes back, and the base-latents / refine
    path of ``refine_top`` splits the same way."""
    import dataclasses

    import torch

    from kbridge.engine import zoo
    from kbridge.engine.generate.sdxl import SDXLGenerator

    prompts, seeds = ["a cat", "a dog on grass", "a rocket", "a red cup", "a clock"], [1, 2, 3, 4, 5]
    split = SDXLGenerator(zoo.resolve("sdxl_base", cfg), zoo.resolve("sdxl_refiner", cfg),
                          dataclasses.replace(cfg.generation, split=2, batch_size=1))
    assert split.lanes == 2 and split._replicas[1][0].unet is split.base.unet
    for name in ("scheduler", "tokenizer", "tokenizer_2"):  # per-call state: one per lane
        assert getattr(split._replicas[1][0], name) is not getattr(split.base, name)
    assert split._replicas[1][1].tokenizer_2 is not split.refiner.tokenizer_2
    # no lanes under a runner swap (onnxruntime, compiled graphs) or on a GPU
    assert SDXLGenerator(zoo.resolve("sdxl_base", cfg), zoo.resolve("sdxl_refiner", cfg),
                         dataclasses.replace(cfg.generation, split=2), swap=lambda b, r: None).lanes == 1
    threads = torch.get_num_threads()
    u0, v0 = gen.counters.unet_evals, gen.counters.vae_decodes
    ref = gen.render(prompts, seeds)
    got = split.render(prompts, seeds)
    assert torch.get_num_threads() == threads
    fresh = []  # a thread started now begins with the process default, not a lane's 1 thread
    t = __import__("threading").Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert fresh == [threads]
    for a, b in zip(ref, got):
        assert np.abs(_a(a) - _a(b)).max() <= 2
    assert (split.counters.unet_evals, split.counters.vae_decodes) == (gen.counters.unet_evals - u0,
                                                                       gen.counters.vae_decodes - v0)
    # the lanes' share: 2 images each, the fifth on the caller's thread
    seen = []
    orig = split._map.__func__

    def spy(self, fn, n):
        def tagged(base, refiner, sl):
            seen.append((base is self.base, sl.start, sl.stop))
            return fn(base, refiner, sl)
        return orig(self, tagged, n)

    split._map = spy.__get__(split)
    lat = split.base_latents(prompts, seeds)
    assert sorted(seen) == [(False, 2, 3), (False, 3, 4), (True, 0, 1), (True, 1, 2), (True, 4, 5)]
    assert torch.equal(lat[4], gen.base_latents(prompts[4:], seeds[4:])[0])  # the remainder: the same call
    imgs = split.refine(lat[:3], prompts[:3], seeds[:3])
    for a, b in zip(ref, imgs):
        assert np.abs(_a(a) - _a(b)).max() <= 2


def test_split_lanes_encode_long_prompts_at_once_each_with_its_own_tokenizer(cfg):
    """Two lanes encoding prompts far over the text encoders' 77 positions at the same time, many
    times: never an error (a tokenizer shared by the lanes lets one lane's untruncated length
    check switch truncation off under the other's call: "Sequence length must be less than
    max_position_embeddings")."""
    import dataclasses
    import threading

    from kbridge.engine import zoo
    from kbridge.engine.generate.sdxl import SDXLGenerator

    split = SDXLGenerator(zoo.resolve("sdxl_base", cfg), zoo.resolve("sdxl_refiner", cfg),
                          dataclasses.replace(cfg.generation, split=2))
    long = " ".join(["a red cup on a wooden table beside a small clock"] * 30)
    errors = []

    def encode(pipe):
        try:
            for _ in range(150):
                pipe.encode_prompt(prompt=long, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
        except Exception as e:  # noqa: BLE001 — collected and asserted on
            errors.append(repr(e))

    lanes = [threading.Thread(target=encode, args=(p,)) for p in (split._replicas[0][0], split._replicas[1][0])]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    assert errors == []


def test_a_split_render_stops_in_every_lane(cfg):
    import dataclasses

    from kbridge.engine import zoo
    from kbridge.engine.generate.sdxl import Interrupted, SDXLGenerator

    split = SDXLGenerator(zoo.resolve("sdxl_base", cfg), zoo.resolve("sdxl_refiner", cfg),
                          dataclasses.replace(cfg.generation, split=2, batch_size=1))
    asked = []
    with pytest.raises(Interrupted):
        split.render(["a", "b", "c", "d"], [1, 2, 3, 4], stop=lambda: asked.append(1) or True)
    assert len(asked) == 2  # each lane stopped after its first denoising step; nothing ran after
