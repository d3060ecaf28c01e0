"""``[generation] refine_top``: the base for every candidate, the refiner and the full VAE decode
only for the top K by a preview; counted work and the refined images checked against a full run."""
import dataclasses

import numpy as np
import pytest
from PIL import Image

from tests.helpers.jsonl import read_jsonl
from tests.helpers.engines import engine_with
from tests.helpers.fake_lmm import FakeLMM


def _run(cfg, engine, out, **gen):
    c = dataclasses.replace(cfg, generation=dataclasses.replace(cfg.generation, **gen))
    rep = engine_with(c, engine, FakeLMM()).run(out=out, limit=3)
    assert not rep.errors
    return {r["sample_id"]: r for r in read_jsonl(out / "results.jsonl")}


@pytest.mark.parametrize("preview", ["linear", "vae"])
def test_only_the_top_k_are_refined_and_they_match_the_full_render(cfg, engine, tmp_path, preview):
    assert cfg.generation.refiner
    gen = engine.models().generators[0]
    u0 = gen.counters.unet_evals
    gen.base_latents(["a red cup"], [1])
    base_steps = (gen.counters.unet_evals - u0) // 2  # CFG: 2 evaluations per step
    steps, k = cfg.generation.steps, 2
    assert 0 < base_steps < steps
    full = _run(cfg, engine, tmp_path / "full")
    top = _run(cfg, engine, tmp_path / "top", refine_top=k, preview=preview)
    imgs = [sid for sid, r in top.items() if r["missing"] == "image"]
    assert imgs
    for sid in imgs:
        r, f = top[sid], full[sid]
        n = len(r["candidates"])
        assert n > k
        flags = [c["refined"] for c in r["candidates"]]
        assert flags.count(True) == k and flags.count(False) == n - k
        c = r["counts"]
        assert c["unet_evals"] == pytest.approx(2 * (n * base_steps + k * (steps - base_steps)), abs=1e-6)
        assert c["unet_evals"] < f["counts"]["unet_evals"] == 2 * n * steps
        assert (c["vae_decodes"], c["preview_decodes"]) == pytest.approx((k, n))
        for a, b in zip(r["candidates"], f["candidates"]):
            x = np.asarray(Image.open(tmp_path / "top" / a["image"]), dtype=np.int16)
            assert x.shape[:2] == (cfg.generation.height, cfg.generation.width)
            if a["refined"]:  # same seeds, same latents: the full render's image (batching noise only)
                y = np.asarray(Image.open(tmp_path / "full" / b["image"]), dtype=np.int16)
                assert np.abs(x - y).max() <= 2
    for r in top.values():
        if r["missing"] == "text":
            assert "refined" not in str(r["candidates"]) and r["counts"]["preview_decodes"] == 0
