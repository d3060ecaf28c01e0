"""The GPU review's findings (/work/shared/reviews/gpu-paths.md), tested on the CPU up to the GPU
boundary: device selection, build plans, profile shapes, flags, and the device each tensor is
created on, with the GPU libraries (TensorRT, torch-tensorrt, vLLM, faiss-gpu, xgrammar's
kernels) replaced by fakes at their boundary. The GPU side is tests/gpu/ (marker ``gpu``).

The ``meta`` device stands in for a GPU where a test needs "not the CPU": torch refuses to mix a
CPU tensor into a meta computation exactly as it refuses to mix it into a CUDA one.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kbridge.engine.config import build_config


# ------------------------------------------------------------------ F: the hf backend on CUDA


class _FakeXgr:
    """xgrammar at its boundary: a host bitmask, and an apply that demands the logits' device."""

    def __init__(self):
        self.applied = []

    @staticmethod
    def allocate_token_bitmask(batch, vocab):
        return torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)

    def apply_token_bitmask_inplace(self, logits, bitmask, vocab_size, indices):
        if bitmask.device != logits.device:  # what xgrammar raises on CUDA logits + a CPU bitmask
            raise RuntimeError("logits and bitmask should be on the same device")
        self.applied.append((logits.device, bitmask.device, list(indices)))


class _Matcher:
    def fill_next_token_bitmask(self, bitmask, i):
        assert bitmask.device.type == "cpu"  # xgrammar's matchers write host memory
        bitmask[i].fill_(-1)

    def accept_token(self, tok):
        return True


def _sampler(monkeypatch, greedy=False):
    from kbridge.engine.lmm import hf

    fake = _FakeXgr()
    monkeypatch.setitem(sys.modules, "xgrammar", fake)
    s = hf._GuidedSampler([_Matcher(), None], [1, 2], [0.7, 0.3], [50, 50], eos=3, banned=[4, 5], vocab=40,
                          greedy=greedy)
    return s, fake


def test_gpu_review_F1_bitmask_meets_the_logits_on_their_device(monkeypatch):
    s, fake = _sampler(monkeypatch, greedy=True)
    out = s(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 40, device="meta"))
    assert out.device.type == "meta"
    assert fake.applied == [(torch.device("meta"), torch.device("meta"), [0])]


def test_gpu_review_F2_temperatures_banned_ids_and_noise_on_the_logits_device(monkeypatch):
    s, _ = _sampler(monkeypatch)
    out = s(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 40, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 40)
    assert s.temps.device.type == "meta" and s.banned.device.type == "meta"
    # CUDA logits get CUDA generators; CPU / meta logits the CPU's (same numbers as before on CPU)
    assert all(g.device.type == "cpu" for g in s.gens)


def test_gpu_review_F2_cpu_sampling_unchanged_and_per_row(monkeypatch):
    """On the CPU the noise is what each row's own generator draws: the same whatever the batch."""
    from kbridge.engine.lmm import hf

    monkeypatch.setitem(sys.modules, "xgrammar", _FakeXgr())
    scores = torch.randn(2, 40, generator=torch.Generator().manual_seed(0))
    both = hf._GuidedSampler([None, None], [1, 2], [0.7, 0.7], [9, 9], 3, [], 40, False)(None, scores.clone())
    alone = hf._GuidedSampler([None], [2], [0.7], [9], 3, [], 40, False)(None, scores[1:].clone())
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=0)
    u = torch.rand(40, generator=torch.Generator().manual_seed(1)).clamp_(1e-20, 1.0)
    torch.testing.assert_close(both[0], scores[0] / 0.7 - torch.log(-torch.log(u)), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ A: native TensorRT


class _CudaDevice:
    """torch.cuda.device at its boundary: records which device is current inside the block."""

    current = [0]

    def __init__(self, d):
        self.idx = torch.device(d).index if not isinstance(d, int) else d

    def __enter__(self):
        self.prev = _CudaDevice.current[0]
        _CudaDevice.current[0] = self.idx

    def __exit__(self, *a):
        _CudaDevice.current[0] = self.prev


def _fake_trt(version="11.0.0", flags=("TF32",)):
    seen = {"flags": [], "builder_device": None}
    trt = types.SimpleNamespace(__version__=version)
    trt.BuilderFlag = types.SimpleNamespace(**{f: f for f in flags})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="ws")
    trt.Logger = type("Logger", (), {"WARNING": 1, "__init__": lambda self, level=0: None})

    class Config:
        def set_memory_pool_limit(self, *a): pass
        def set_flag(self, f): seen["flags"].append(f)
        def create_timing_cache(self, b): return b
        def set_timing_cache(self, c, ignore_mismatch): pass
        def add_optimization_profile(self, p): pass
        def get_timing_cache(self): return types.SimpleNamespace(serialize=lambda: b"tc")

    class Builder:
        def __init__(self, logger): seen["builder_device"] = _CudaDevice.current[0]
        def create_network(self, flags): return object()
        def create_builder_config(self): return Config()
        def create_optimization_profile(self): return types.SimpleNamespace(set_shape=lambda *a: None)
        def build_serialized_network(self, net, cfg):
            seen["build_device"] = _CudaDevice.current[0]
            return b"engine"

    trt.Builder = Builder
    trt.OnnxParser = lambda net, log: types.SimpleNamespace(parse_from_file=lambda p: True, num_errors=0)
    return trt, seen


def _plan(tmp_path, fp16, version="11.0.0", device="cuda:2"):
    from kbridge.export.specs import Axis, ExportSpec, TensorSpec
    from kbridge.export.tensorrt import plan_build

    spec = ExportSpec("m", (TensorSpec("x", ("batch", 4)),), (TensorSpec("y", ("batch", 4)),),
                      (Axis("batch", 1, 2, 8, 2),))
    (tmp_path / "m.onnx").write_bytes(b"")
    return plan_build(spec, tmp_path / "m.onnx", tmp_path / "out" / "model.plan", tmp_path,
                      {"tensorrt": version, "compute_capability": "8.9"}, fp16, device)


def test_gpu_review_A1_tensorrt11_fp16_builds_set_no_fp16_flag(tmp_path, monkeypatch):
    from kbridge.export.onnx import ExportError
    from kbridge.export.tensorrt import build_engine, precision_flags

    assert precision_flags("11.0.0", True) == ("TF32",) and precision_flags("11.0.0", False) == ("TF32",)
    assert precision_flags("10.13.0", True) == ("TF32", "FP16")
    trt, seen = _fake_trt()  # TensorRT 11: BuilderFlag has TF32, no FP16
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "device", _CudaDevice)
    assert build_engine(_plan(tmp_path, fp16=True)).read_bytes() == b"engine"
    assert seen["flags"] == ["TF32"]
    # a plan naming a flag this TensorRT lacks is one typed error, not an AttributeError
    with pytest.raises(ExportError, match="no BuilderFlag FP16"):
        build_engine(_plan(tmp_path, fp16=True, version="10.13.0"))


def test_gpu_review_A2_engine_built_with_the_stage_gpu_current(tmp_path, monkeypatch):
    from kbridge.export.tensorrt import build_engine

    trt, seen = _fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "device", _CudaDevice)
    build_engine(_plan(tmp_path, fp16=False, device="cuda:2"))
    assert seen["builder_device"] == 2 and seen["build_device"] == 2 and _CudaDevice.current == [0]


def test_gpu_review_A5_profile_max_follows_the_profile_batch():
    from kbridge.export.parts import max_batch

    for profile, rows in (("h100", 7), ("4090x4", 2), ("edge", 2)):
        cfg = build_config(profile)
        assert max_batch(cfg, cfg.generation.batch_size) == rows, profile  # UNet profile max: 2 × rows
    tiny = build_config("tiny")
    assert max_batch(tiny, tiny.generation.batch_size) == 32
    # a larger batch than the profile's max still fits: the max follows it
    assert max_batch(build_config("h100", overrides={"generation": {"batch_size": 12}}), 12) == 12


# ------------------------------------------------------------------ B: ONNX export and fp16


def test_gpu_review_B1_export_examples_follow_the_module_device_and_dtype():
    from kbridge.export.onnx import trace_inputs
    from kbridge.export.specs import Axis, ExportSpec, TensorSpec

    spec = ExportSpec("m", (TensorSpec("x", ("batch", 4)), TensorSpec("ids", ("batch", 3), "int64", 9)),
                      (TensorSpec("y", ("batch", 4)),), (Axis("batch", 1, 2, 8, 2),))
    gpu_like = torch.nn.Linear(4, 4, device="meta", dtype=torch.float16)  # a "CUDA fp16" pipeline module
    m, ex = trace_inputs(spec, gpu_like, fp16=True)
    assert m is gpu_like  # already the graph's dtype: no second copy of the weights
    assert ex["x"].device.type == "meta" and ex["x"].dtype == torch.float16
    assert ex["ids"].device.type == "meta" and ex["ids"].dtype == torch.int64
    m, ex = trace_inputs(spec, gpu_like, fp16=False)  # an fp32 graph of an fp16 module: a cast copy
    assert m is not gpu_like and next(m.parameters()).dtype == torch.float32 and gpu_like.weight.dtype == torch.float16
    assert ex["x"].dtype == torch.float32 and ex["x"].device.type == "meta"


def test_gpu_review_B2_sdxl_vae_graphs_stay_float32(tmp_path):
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


def test_gpu_review_B3_gpu_profiles_build_fp16_graphs():
    for profile in ("h100", "4090x4", "edge"):
        assert build_config(profile).runtime.fp16, profile
    assert not build_config("tiny").runtime.fp16


# ------------------------------------------------------------------ C: torch-tensorrt


def _spec(opt_batch):
    from kbridge.export.specs import Axis, ExportSpec, TensorSpec

    return ExportSpec("m", (TensorSpec("x", ("batch", 4, 8, 8)), TensorSpec("ids", ("batch", 77), "int64", 9)),
                      (TensorSpec("y", ("batch", 4, 8, 8)),), (Axis("batch", 1, opt_batch, 2, 2),))


def test_gpu_review_C1_C3_C4_compile_settings_bind_device_and_cache(tmp_path):
    from kbridge.engine.runtime.torch_trt import compile_settings

    s = compile_settings(_spec(1), "cuda:2", True, tmp_path)
    assert s["device"] == torch.device("cuda", 2)
    assert "enabled_precisions" not in s  # ignored on the dynamo path: precision is the module's dtype
    assert s["cache_built_engines"] and s["reuse_cached_engines"]
    assert s["engine_cache_dir"] == str(tmp_path / "engines") and s["timing_cache_path"] == str(tmp_path / "timing.cache")


def test_gpu_review_C2_trace_at_opt_two_not_one():
    from kbridge.engine.runtime.torch_trt import trace_shapes

    shapes = trace_shapes(_spec(1))  # edge: opt batch 1 would make torch.export specialise the batch
    assert shapes["x"] == ((1, 4, 8, 8), (2, 4, 8, 8), (2, 4, 8, 8))
    assert shapes["ids"] == ((1, 77), (2, 77), (2, 77))  # static dims untouched


def test_gpu_review_C4_runner_compiles_a_copy_on_the_stage_gpu(monkeypatch, tmp_path):
    """With torch-tensorrt faked at its boundary: the pipeline's own module is not cast or moved."""
    from kbridge.engine.runtime import torch_trt

    seen = {}
    fake = types.SimpleNamespace(Input=lambda **kw: kw)

    def compile(module, inputs, **kw):
        seen.update(kw, module=module, current=_CudaDevice.current[0], inputs=inputs)
        return lambda *a: (a[0],)

    fake.compile = compile
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", _CudaDevice)
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append((self, a)) or self)
    own = torch.nn.Linear(4, 4)
    torch_trt.torch_tensorrt_runner(_spec(1), own, "cuda:2", True, tmp_path)
    assert seen["module"] is not own and all(m is not own for m, _ in moved)
    assert seen["current"] == 2 and seen["device"] == torch.device("cuda", 2)
    assert seen["inputs"][0]["opt_shape"] == (2, 4, 8, 8) and seen["inputs"][1]["dtype"] == torch.int64


# ------------------------------------------------------------------ D: onnxruntime-gpu


def test_gpu_review_D1_D2_trt_ep_profiles_and_cuda_arena(tmp_path):
    from kbridge.engine.runtime.ort import _providers

    trt, cuda, cpu = _providers("tensorrt", 2, True, tmp_path, _spec(2))
    assert trt[1]["device_id"] == 2 and cuda[1]["device_id"] == 2 and cpu == "CPUExecutionProvider"
    assert trt[1]["trt_profile_min_shapes"] == "x:1x4x8x8,ids:1x77"
    assert trt[1]["trt_profile_opt_shapes"] == "x:2x4x8x8,ids:2x77"
    assert trt[1]["trt_profile_max_shapes"] == "x:2x4x8x8,ids:2x77"
    assert cuda[1]["arena_extend_strategy"] == "kSameAsRequested"


# ------------------------------------------------------------------ runtime options


def test_gpu_review_I1_compile_mode_reaches_torch_compile(monkeypatch):
    from kbridge.engine.runtime.torch_runner import torch_runner

    modes = []
    monkeypatch.setattr(torch, "compile", lambda m, mode=None: modes.append(mode) or m)
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    spec = _spec(2)

    class Ident(torch.nn.Module):
        def forward(self, x, *_):
            return (x,)

    lin = Ident()
    run = torch_runner(replace(spec, inputs=spec.inputs[:1]), lin, compile=True, mode="reduce-overhead")
    x = torch.ones(2, 4, 8, 8)
    y = run({"x": x})["y"]
    assert modes == ["reduce-overhead"] and marks == [1]
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()  # cloned: the graph's buffer is reused
    torch_runner(spec, lin, compile=True)
    assert modes[-1] is None
    with pytest.raises(Exception, match="unknown compile mode"):
        build_config("tiny", overrides={"runtime": {"compile_mode": "fast"}})
