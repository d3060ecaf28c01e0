"""The native TensorRT build on the CPU, TensorRT faked at its boundary: the precision flags each
TensorRT version takes, and the engine built with the stage's GPU current."""
import sys
import types

import pytest
import torch

from tests.helpers.cuda_fakes import CudaDevice


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
        def __init__(self, logger): seen["builder_device"] = CudaDevice.current[0]
        def create_network(self, flags): return object()
        def create_builder_config(self): return Config()
        def create_optimization_profile(self): return types.SimpleNamespace(set_shape=lambda *a: None)
        def build_serialized_network(self, net, cfg):
            seen["build_device"] = CudaDevice.current[0]
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


def test_tensorrt11_fp16_builds_set_no_fp16_flag(tmp_path, monkeypatch):
    from kbridge.export.onnx import ExportError
    from kbridge.export.tensorrt import build_engine, precision_flags

    assert precision_flags("11.0.0", True) == ("TF32",) and precision_flags("11.0.0", False) == ("TF32",)
    assert precision_flags("10.13.0", True) == ("TF32", "FP16")
    trt, seen = _fake_trt()  # TensorRT 11: BuilderFlag has TF32, no FP16
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "device", CudaDevice)
    assert build_engine(_plan(tmp_path, fp16=True)).read_bytes() == b"engine"
    assert seen["flags"] == ["TF32"]
    # a plan naming a flag this TensorRT lacks is one typed error, not an AttributeError
    with pytest.raises(ExportError, match="no BuilderFlag FP16"):
        build_engine(_plan(tmp_path, fp16=True, version="10.13.0"))


def test_engine_is_built_with_the_stage_gpu_current(tmp_path, monkeypatch):
    from kbridge.export.tensorrt import build_engine

    trt, seen = _fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "device", CudaDevice)
    build_engine(_plan(tmp_path, fp16=False, device="cuda:2"))
    assert seen["builder_device"] == 2 and seen["build_device"] == 2 and CudaDevice.current == [0]
