"""torch-tensorrt runner (CUDA only; the ``tensorrt`` extra): a copy of the IO module compiled
through the dynamo frontend with the spec's min / opt / max shapes, on the stage's GPU, with
torch-tensorrt's engine cache under the artifact cache (a second run reuses the built engines).

The copy is made on the CPU and only then moved to the GPU in the compile dtype (``deepcopy`` of a
CUDA module would put a second full copy on the GPU), and swap.py releases the pipeline's own
weights once the engines are built (``RELEASING_BACKENDS``). torch-TensorRT 2.13 caches and reuses
engines only when they are refittable: ``immutable_weights`` defaults to True
(``dynamo/_defaults.py``), and ``dynamo/conversion/_conversion.py`` then skips the cache ("The engine
weights are immutable, so the engine will not be cached"), so it is set False."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from kbridge.engine.errors import RuntimeUnavailable
from kbridge.export.device import cuda_device, on_device
from kbridge.export.specs import ExportSpec


def trace_shapes(spec: ExportSpec) -> dict[str, tuple[tuple, tuple, tuple]]:
    """The spec's profile with every dynamic axis' opt raised to ≥ 2 (torch.export, which traces at
    the opt shape, specialises size-1 dimensions: the edge profile's opt batch of 1 would fix the
    batch to 1), clipped to the axis max."""
    prof = spec.profile()
    out = {}
    for t in spec.inputs:
        mn, opt, mx = prof[t.name]
        opt = tuple(max(o, min(2, m)) if isinstance(d, str) else o for d, o, m in zip(t.shape, opt, mx))
        out[t.name] = (mn, opt, mx)
    return out


def compile_settings(spec: ExportSpec, device: str, fp16: bool, cache_dir: Path) -> dict:
    """Keyword arguments of ``torch_tensorrt.compile`` (besides ``inputs``), pure so it is tested
    without a GPU. Precision comes from the module's dtype on the dynamo path (``enabled_precisions``
    is not forwarded there), so it is not passed."""
    cache_dir = Path(cache_dir)
    return dict(ir="dynamo", device=cuda_device(device), cache_built_engines=True, reuse_cached_engines=True,
                immutable_weights=False, engine_cache_dir=str(cache_dir / "engines"),
                timing_cache_path=str(cache_dir / "timing.cache"))


def cpu_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy whose parameters and buffers are on the CPU, made without a second copy on the
    module's device (and without touching the original, which other users share)."""
    memo: dict = {}
    for t in list(module.parameters()) + list(module.buffers()):
        c = t.detach().to("cpu", copy=True)
        memo[id(t)] = torch.nn.Parameter(c, requires_grad=False) if isinstance(t, torch.nn.Parameter) else c
    return copy.deepcopy(module, memo)


def torch_tensorrt_runner(spec: ExportSpec, module: torch.nn.Module, device: str = "cuda:0", fp16: bool = False,
                          cache_dir: Path | None = None):
    try:
        import torch_tensorrt
    except ImportError as e:
        raise RuntimeUnavailable("torch-tensorrt is not installed (pip install 'kbridge[tensorrt]')") from e
    if not torch.cuda.is_available():
        raise RuntimeUnavailable("needs a CUDA GPU: torch-tensorrt compiles for the local GPU")
    dev = cuda_device(device)
    dtype = torch.float16 if fp16 else torch.float32
    # a copy: casting the pipeline's own (shared) module would change it for every other user; made on
    # the CPU, so the GPU holds the original and one copy in the compile dtype, never two full copies
    module = cpu_copy(module).to(dev, dtype).eval()
    shapes = trace_shapes(spec)
    specs = [torch_tensorrt.Input(min_shape=shapes[t.name][0], opt_shape=shapes[t.name][1],
                                  max_shape=shapes[t.name][2], dtype=torch.int64 if t.dtype == "int64" else dtype)
             for t in spec.inputs]
    settings = compile_settings(spec, device, fp16, Path(cache_dir or Path.home() / ".cache" / "kbridge" / "torch_trt"))
    with on_device(dev):
        compiled = torch_tensorrt.compile(module, inputs=specs, **settings)
    outs = spec.output_names()

    def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [inputs[t.name].to(dev, torch.int64 if t.dtype == "int64" else dtype) for t in spec.inputs]
        with torch.inference_mode(), on_device(dev):
            return dict(zip(outs, compiled(*args)))

    return run
