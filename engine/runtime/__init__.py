"""The runner seam for dense models: a runner is a callable over named tensors,

    runner({"sample": x, "timestep": t, ...}) -> {"noise_pred": y}

with names and shapes from the model's ExportSpec (kbridge.export.specs). Backends (one flat
table, imported lazily): torch eager, torch.compile, onnxruntime (CPU / CUDA / TensorRT execution
providers), native TensorRT engines, torch-tensorrt. ``swap.py`` puts runners inside diffusers
pipelines and the CLIP scorer; everything else in the engine is unchanged.
"""
from __future__ import annotations

from typing import Callable

import torch

from kbridge.engine.config import PipelineConfig
from kbridge.engine.errors import RuntimeUnavailable


Runner = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def onnx_provider(cfg: PipelineConfig, device: str) -> str:
    p = cfg.runtime.onnx_provider
    if p == "auto":
        return "cuda" if str(device).startswith("cuda") else "cpu"
    return p


def make_runner(ex, cfg: PipelineConfig, device: str = "cpu", backend: str | None = None) -> Runner:
    """A runner for one exportable part (kbridge.export.parts.Exportable) on ``device``; compiled
    artifacts come from (or are built into) the artifact cache. Parts that are unsafe in float16
    (the stock SDXL VAE) run float32 graphs whatever ``runtime.fp16`` says."""
    from kbridge.export.cache import artifacts_root, ensure_onnx, ensure_tensorrt
    from kbridge.export.parts import runtime_for

    backend = backend or cfg.runtime.backend
    rt = runtime_for(ex, cfg.runtime)
    threads = cfg.run.threads or torch.get_num_threads()
    root = artifacts_root(cfg.cache_dir())
    if backend in ("torch", "compile"):
        from kbridge.engine.runtime.torch_runner import torch_runner

        return torch_runner(ex.spec, ex.module, compile=backend == "compile", mode=rt.compile_mode)
    if backend == "onnx":
        from kbridge.engine.runtime.ort import OrtRunner

        art = ensure_onnx(ex, root, rt)
        return OrtRunner(art.path, ex.spec, onnx_provider(cfg, device), device, threads, rt.fp16)
    gpu = device if str(device).startswith("cuda") else "cuda:0"  # TensorRT runs on a GPU whatever the profile
    if backend == "tensorrt":
        from kbridge.engine.runtime.trt import TrtRunner

        art = ensure_tensorrt(ex, root, rt, gpu)
        return TrtRunner(art.path, ex.spec, gpu, rt.fp16)
    if backend == "torch_tensorrt":
        from kbridge.engine.runtime.torch_trt import torch_tensorrt_runner

        return torch_tensorrt_runner(ex.spec, ex.module, gpu, rt.fp16, root / "torch_tensorrt" / ex.spec.name)
    raise RuntimeUnavailable(f"unknown runtime backend {backend!r}")
