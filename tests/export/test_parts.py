"""The exported parts' shapes and precision: the profile's batch bounds the dynamic axis, GPU
profiles build fp16 graphs, the SDXL VAE's graphs stay float32."""
from kbridge.engine.config import build_config


def test_profile_max_batch_follows_the_profile_batch():
    from kbridge.export.parts import max_batch

    for profile, rows in (("h100", 7), ("4090x4", 2), ("edge", 2)):
        cfg = build_config(profile)
        assert max_batch(cfg, cfg.generation.batch_size) == rows, profile  # UNet profile max: 2 × rows
    tiny = build_config("tiny")
    assert max_batch(tiny, tiny.generation.batch_size) == 32
    # a larger batch than the profile's max still fits: the max follows it
    assert max_batch(build_config("h100", overrides={"generation": {"batch_size": 12}}), 12) == 12


def test_sdxl_vae_graphs_stay_float32(tmp_path):
    from kbridge.engine import zoo
    from kbridge.export.cache import onnx_key
    from kbridge.export.parts import runtime_for, sdxl_parts

    cfg = build_config("tiny", overrides={"runtime": {"fp16": True}})
    from diffusers import StableDiffusionXLPipeline

    d = zoo.resolve("sdxl_base", cfg)
    pipe = StableDiffusionXLPipeline.from_pretrained(d)
    parts = sdxl_parts(pipe, d, "sdxl_base", cfg)
    assert pipe.vae.config.force_upcast  # the stock SDXL VAE
    for name, ex in parts.items():
        fp16 = runtime_for(ex, cfg.runtime).fp16
        assert fp16 == ("vae" not in name), name
        assert onnx_key(ex, runtime_for(ex, cfg.runtime), tmp_path)["dtype"] == ("float16" if fp16 else "float32")
    # an fp16-fix VAE (force_upcast false) may run fp16 graphs
    pipe.vae.register_to_config(force_upcast=False)
    assert runtime_for(sdxl_parts(pipe, d, "sdxl_base", cfg)["sdxl_base.vae_decoder"], cfg.runtime).fp16


def test_gpu_profiles_build_fp16_graphs():
    for profile in ("h100", "4090x4", "edge"):
        assert build_config(profile).runtime.fp16, profile
    assert not build_config("tiny").runtime.fp16
