"""Runners inside the engine: ``--backend onnx`` scores like ``--backend torch`` and picks the same
candidates; `kbridge export` reports cached artifacts; backend selection errors are clear.

Tolerance: semantic / total scores within 1e-4 absolute (measured ≤ 1e-6 on the tiny profile).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace

import pytest

from tests.helpers.jsonl import read_jsonl

pytest.importorskip("onnxruntime", reason="onnxruntime is in the cpu extra: pip install -e '.[cpu,test]'")

SCORE_ATOL = 1e-4


def test_onnx_backend_gives_torch_scores_and_best_candidates(engine, cfg, exported, tmp_path):
    from kbridge.engine.api import Engine

    ref = engine.run(out=tmp_path / "torch", limit=2)
    assert not ref.errors
    # reuse the torch run's LMM answers: this test is about the dense models, not LMM sampling
    (tmp_path / "onnx").mkdir()
    shutil.copy(tmp_path / "torch" / "cache.sqlite", tmp_path / "onnx" / "cache.sqlite")
    onnx_engine = Engine(replace(cfg, runtime=replace(cfg.runtime, backend="onnx")))
    models = onnx_engine.models(need_diffusion=True)
    assert type(models.generators[0].base.unet).__name__ == "RunnerUNet"
    assert type(models.generators[0].base.vae).__name__ == "RunnerVae"
    assert models.scorer.towers is not None
    got = onnx_engine.run(out=tmp_path / "onnx", limit=2)
    assert not got.errors and got.completed == ref.completed == 2
    a = {r["sample_id"]: r for r in read_jsonl(tmp_path / "torch" / "results.jsonl")}
    b = {r["sample_id"]: r for r in read_jsonl(tmp_path / "onnx" / "results.jsonl")}
    assert a.keys() == b.keys()
    assert any(r["missing"] == "image" for r in a.values())  # diffusion ran through the runners
    for sid in a:
        assert a[sid]["best"] == b[sid]["best"], sid
        ca, cb = a[sid]["candidates"], b[sid]["candidates"]
        assert [c["id"] for c in ca] == [c["id"] for c in cb]
        for x, y in zip(ca, cb):
            for k in ("semantic", "graph", "total"):
                assert abs(x["scores"][k] - y["scores"][k]) <= SCORE_ATOL, (sid, x["id"], k)
    # the diffusion counters still count through the swapped UNet
    assert models.generators[0].counters.unet_evals > 0


def test_unknown_backend_is_a_config_error():
    from kbridge.engine.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="unknown runtime.backend 'tvm'"):
        build_config("tiny", overrides={"runtime": {"backend": "tvm"}})


def test_export_cli_reports_found_cached(exported):
    r = subprocess.run([sys.executable, "-m", "kbridge.cli", "export", "--models", "clip.vision,clip.text"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines == [f"{n}: found cached {exported[n].path}" for n in ("clip.vision", "clip.text")]
    r = subprocess.run([sys.executable, "-m", "kbridge.cli", "export", "--models", "nope"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown model(s) nope" in r.stderr


def test_run_backend_flag_is_validated(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kbridge.cli", "run", "--backend", "tvm", "--out", tmp_path / "o"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: unknown runtime.backend 'tvm' (known: torch, compile, onnx, "
                                             "tensorrt, torch_tensorrt)"]


def test_swapped_pipelines_with_torch_runners_render_the_same_images(engine, cfg):
    """The wrappers alone (timestep broadcast, text-encoder outputs, VAE decode) change nothing."""
    import numpy as np

    from kbridge.engine import zoo
    from kbridge.engine.generate.sdxl import SDXLGenerator
    from kbridge.engine.runtime import make_runner
    from kbridge.engine.runtime.swap import swap_sdxl

    base, refiner = zoo.resolve("sdxl_base", cfg), zoo.resolve("sdxl_refiner", cfg)
    runners = {}

    def swap(b, r):
        runners.update(swap_sdxl(b, r, base, refiner, cfg, make=lambda ex, c, d: make_runner(ex, c, d, "torch")))

    gen = SDXLGenerator(base, refiner, cfg.generation, swap=swap)
    assert set(runners) == {"sdxl_base.unet", "sdxl_base.text_encoder", "sdxl_base.text_encoder_2",
                            "sdxl_base.vae_decoder", "sdxl_refiner.unet"}
    assert gen.refiner.vae is gen.base.vae and gen.refiner.text_encoder_2 is gen.base.text_encoder_2
    prompts, seeds = ["a red cup on a table", "a clock"], [3, 4]
    got = gen.render(prompts, seeds)
    ref = engine.models().generators[0].render(prompts, seeds)
    for a, b in zip(got, ref):
        assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1
    assert gen.counters.unet_evals == 2 * 2 * cfg.generation.steps  # CFG doubles, base + refiner share steps
