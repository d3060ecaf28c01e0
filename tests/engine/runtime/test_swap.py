"""Runners swapped into the SDXL pipelines: the pipeline's own weights are released and the images
stay the same; the VAE decode keeps its rules through a runner (one image at a time under
slicing, the preview upcast bypassing a compiled decoder, a tiled VAE staying in torch)."""
from dataclasses import replace

import pytest
import torch


def test_swapped_modules_release_their_weights_and_still_render(cfg):
    import copy

    import numpy as np

    from kbridge.engine import zoo
    from kbridge.engine.generate.sdxl import SDXLGenerator
    from kbridge.engine.runtime.swap import swap_sdxl
    from kbridge.engine.runtime.torch_runner import torch_runner

    base, refiner = zoo.resolve("sdxl_base", cfg), zoo.resolve("sdxl_refiner", cfg)
    g = replace(cfg.generation, batch_size=2)
    ref = SDXLGenerator(base, refiner, g).render(["a red cup"], [5])[0]
    # a runner that holds its own copy, as an ONNX / TensorRT runner holds a graph file / an engine
    devices = []
    make = lambda ex, c, dev: devices.append(dev) or torch_runner(ex.spec, copy.deepcopy(ex.module))  # noqa: E731
    # the config names another device than the one this worker's pipeline was loaded on
    other = replace(cfg, generation=replace(g, device="cuda:3"))
    swapped = SDXLGenerator(base, refiner, g, swap=lambda b, r: swap_sdxl(b, r, base, refiner, other, make, True))
    for pipe, name in ((swapped.base, "unet"), (swapped.base, "text_encoder"), (swapped.base, "text_encoder_2"),
                       (swapped.refiner, "unet")):
        m = getattr(pipe, name)
        assert m.released and all(p.device.type == "meta" for p in m.inner.parameters()), name
        assert m.device.type == "cpu" and m.dtype == torch.float32  # what the pipeline reads
    assert all(p.device.type == "cpu" for p in swapped.base.vae.inner.parameters())  # img2img encode stays
    assert devices == ["cpu"] * 5  # every runner where its pipeline lives, not on the config's cuda:3
    got = swapped.render(["a red cup"], [5])[0]
    assert np.abs(np.asarray(got, np.int16) - np.asarray(ref, np.int16)).max() <= 2
    assert swapped.counters.unet_evals > 0


def _tiny_vae(cfg, dtype=torch.float32):
    from diffusers import AutoencoderKL

    from kbridge.engine import zoo

    return AutoencoderKL.from_pretrained(zoo.resolve("sdxl_base", cfg) / "vae").to(dtype).eval()


def _decoder_calls(vae):
    calls = []
    vae.decoder.register_forward_pre_hook(lambda m, a: calls.append((a[0].shape[0], a[0].dtype)))
    return calls


def test_gpu_profiles_decode_one_image_at_a_time_also_through_a_runner(cfg):
    """diffusers' AutoencoderKL with slicing decodes a batch one image at a time (its decoder runs
    once per image): the fp32 peak is one image's, the plan's figure. GPU profiles turn it on, and a
    compiled VAE (RunnerVae) keeps that rule."""
    from kbridge.engine.config import build_config
    from kbridge.engine.runtime.swap import RunnerVae

    for p in ("h100", "4090x4", "4090x4-72b", "edge"):
        assert build_config(p).generation.vae_slicing, p
    vae = _tiny_vae(cfg)
    calls = _decoder_calls(vae)
    z = torch.randn(3, 4, 8, 8)
    with torch.inference_mode():
        ref = vae.decode(z).sample
        assert [c[0] for c in calls] == [3]
        vae.enable_slicing()
        calls.clear()
        assert torch.allclose(vae.decode(z).sample, ref, atol=1e-5) and [c[0] for c in calls] == [1, 1, 1]
        seen = []
        runner = lambda d: seen.append(d["latents"].shape[0]) or {"image": vae.decode(d["latents"]).sample}  # noqa: E731
        out = RunnerVae(vae, runner).decode(z).sample
    assert seen == [1, 1, 1] and torch.allclose(out, ref, atol=1e-5)


def test_vae_preview_upcasts_like_diffusers_and_bypasses_a_compiled_vae(cfg):
    """diffusers' SDXL pipelines decode an fp16 VAE with ``force_upcast`` in fp32 (the stock SDXL VAE
    overflows in fp16); the preview does the same, gives the VAE back in fp16, and never sends its
    half-size latents to a compiled decoder (whose spec is the full size)."""
    from kbridge.engine.generate.sdxl import decode_upcast
    from kbridge.engine.runtime.swap import RunnerVae

    vae = _tiny_vae(cfg, torch.float16)
    assert vae.config.force_upcast  # the SDXL VAE's published config says so too
    calls = _decoder_calls(vae)
    z = torch.randn(2, 4, 4, 4)
    with torch.inference_mode():
        out = decode_upcast(RunnerVae(vae, lambda d: pytest.fail("the runner got the preview")), z)
    assert calls == [(2, torch.float32)] and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert vae.dtype == torch.float16
    vae.register_to_config(force_upcast=False)  # e.g. the fp16-fix VAE: decoded in its own dtype
    calls.clear()
    with torch.inference_mode():
        decode_upcast(vae, z)
    assert calls == [(2, torch.float16)]


def test_a_tiled_vae_stays_in_torch_under_a_compiled_backend(cfg):
    """edge tiles the VAE decode (diffusers' ``enable_tiling``); a compiled decoder is full-frame, so
    under onnx / tensorrt the torch VAE (which tiles) stays and no decoder runner is built."""
    import copy
    from dataclasses import replace

    from kbridge.engine import zoo
    from kbridge.engine.generate.sdxl import SDXLGenerator
    from kbridge.engine.runtime.swap import RunnerVae, swap_sdxl
    from kbridge.engine.runtime.torch_runner import torch_runner

    base, refiner = zoo.resolve("sdxl_base", cfg), zoo.resolve("sdxl_refiner", cfg)
    built = []
    make = lambda ex, c, dev: built.append(ex.spec.name) or torch_runner(ex.spec, copy.deepcopy(ex.module))  # noqa: E731
    g = replace(cfg.generation, vae_tiling=True)
    onnx = replace(cfg, generation=g, runtime=replace(cfg.runtime, backend="onnx"))
    gen = SDXLGenerator(base, refiner, g, swap=lambda b, r: swap_sdxl(b, r, base, refiner, onnx, make))
    assert not isinstance(gen.base.vae, RunnerVae) and gen.base.vae.use_tiling and gen.refiner.vae is gen.base.vae
    assert "sdxl_base.vae_decoder" not in built and "sdxl_base.unet" in built
