"""Native TensorRT engines built from the exported ONNX: a build plan (inputs, min/opt/max profile,
precision flags, engine and timing-cache paths) that can be produced and checked anywhere, and the
build itself, which needs a CUDA GPU and the ``tensorrt`` package (the ``tensorrt`` extra).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from kbridge.export.onnx import ExportError
from kbridge.export.specs import ExportSpec
from kbridge.engine.errors import Unavailable

log = logging.getLogger(__name__)


class TensorRTUnavailable(Unavailable, RuntimeError):
    """No CUDA GPU, or the tensorrt package is not installed."""


@dataclass(frozen=True)
class TrtBuildPlan:
    onnx_path: Path
    engine_path: Path
    timing_cache: Path
    """Shared across models of one TensorRT version and GPU architecture: tactic timings carry over."""
    profile: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]
    """(input name, min, opt, max) for every input, in spec order."""
    fp16: bool
    flags: tuple[str, ...] = field(default=())
    """BuilderFlag names set on the config. TensorRT 11 is always strongly typed: precision comes from
    the graph (an fp16 ONNX builds an fp16 engine) and ``BuilderFlag.FP16`` no longer exists, so only
    TF32 is set (it affects the fp32 layers: the VAE, and everything in an fp32 graph). TensorRT 10
    (weakly typed by default) also gets FP16 when ``fp16``."""
    workspace_bytes: int = 4 << 30
    device: str = "cuda:0"
    """The GPU the engine is built on and bound to (the stage's device)."""

    def check(self) -> None:
        """Every profile is rank-consistent and min ≤ opt ≤ max elementwise."""
        for name, mn, opt, mx in self.profile:
            if not len(mn) == len(opt) == len(mx):
                raise ExportError(f"{name}: profile ranks differ: {mn} {opt} {mx}")
            if not all(1 <= a <= b <= c for a, b, c in zip(mn, opt, mx)):
                raise ExportError(f"{name}: profile needs 1 <= min <= opt <= max, got {mn} {opt} {mx}")


def gpu_facts(device: str = "cuda:0") -> dict:
    """TensorRT version and the GPU's compute capability (both in the engine's cache key)."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("needs a CUDA GPU: TensorRT engines are built for one GPU architecture")
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable("the tensorrt package is not installed (pip install 'kbridge[tensorrt]')") from e
    dev = torch.device(device if str(device).startswith("cuda") else "cuda:0")
    major, minor = torch.cuda.get_device_capability(dev)
    return {"tensorrt": trt.__version__, "compute_capability": f"{major}.{minor}"}


def precision_flags(tensorrt_version: str, fp16: bool) -> tuple[str, ...]:
    """BuilderFlag names for a TensorRT version: TF32 always; FP16 only before TensorRT 11 (weak
    typing). 11.x removed the flag: strong typing takes each layer's precision from the graph."""
    major = int(str(tensorrt_version).split(".")[0])
    return ("TF32", "FP16") if fp16 and major < 11 else ("TF32",)


def plan_build(spec: ExportSpec, onnx_path: Path, engine_path: Path, root: Path, facts: dict,
               fp16: bool, device: str = "cuda:0") -> TrtBuildPlan:
    cc = facts["compute_capability"].replace(".", "")
    prof = tuple((n, *shapes) for n, shapes in spec.profile().items())
    plan = TrtBuildPlan(Path(onnx_path), Path(engine_path),
                        Path(root) / "timing" / f"{facts['tensorrt']}-sm{cc}.cache", prof, fp16,
                        precision_flags(facts["tensorrt"], fp16), device=str(device))
    plan.check()
    return plan


def build_engine(plan: TrtBuildPlan) -> Path:
    """Parse the ONNX (external weights are read from beside it), set the optimisation profile and
    flags, build, serialise; the timing cache is loaded first and saved after. The build runs with
    ``plan.device`` current: TensorRT builds on (and binds to) the current CUDA device."""
    import tensorrt as trt

    from kbridge.export.device import on_device

    plan.check()
    missing = [f for f in plan.flags if not hasattr(trt.BuilderFlag, f)]
    if missing:
        raise ExportError(f"{plan.onnx_path}: TensorRT {trt.__version__} has no BuilderFlag {', '.join(missing)}")
    with on_device(plan.device):
        return _build(trt, plan)


def _build(trt, plan: TrtBuildPlan) -> Path:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{plan.onnx_path}: TensorRT cannot parse the ONNX: {errs[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    cache_bytes = plan.timing_cache.read_bytes() if plan.timing_cache.exists() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, mn, opt, mx in plan.profile:
        profile.set_shape(name, mn, opt, mx)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{plan.onnx_path}: TensorRT build failed (see the TensorRT log above)")
    plan.engine_path.parent.mkdir(parents=True, exist_ok=True)
    plan.engine_path.write_bytes(bytes(serialized))
    plan.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan.timing_cache.with_suffix(".tmp")
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    tmp.replace(plan.timing_cache)
    log.info("built TensorRT engine %s", plan.engine_path)
    return plan.engine_path
