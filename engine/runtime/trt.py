"""Native TensorRT engine runner with CUDA graph replay (CUDA only; the ``tensorrt`` extra).

Everything is bound to the stage's GPU: the engine is deserialised and its contexts created with
that device current (a TensorRT engine / context belongs to the device current at creation).

Per input-shape signature (up to ``max_graphs`` of them) one execution context, static
input / output buffers and a CUDA graph captured after one warm-up launch: a graph replays its own
context's state, so a later signature cannot rewrite what an earlier graph reads. Every context
of every engine of one pipeline on one GPU shares one activation buffer (``USER_MANAGED``
allocation, sized for the largest profile max among them), as NVIDIA's demoDiffusion does: the
pipeline's engines run one after another on its render thread, so they never use it at the same
time (the CLIP towers, called from the scorer's thread, share another). The buffer grows while no
graph has captured its address; an engine that needs more after that gets its own. Signatures beyond
``max_graphs`` (e.g. many CLIP text lengths) run ungraphed on one more context. A call copies
inputs into the static buffers, replays and returns copies of the outputs.
"""
from __future__ import annotations

import logging
import weakref
from pathlib import Path

import torch

from kbridge.engine.errors import KbridgeError, RuntimeUnavailable
from kbridge.export.device import cuda_device, on_device
from kbridge.export.specs import ExportSpec

log = logging.getLogger(__name__)


class TrtExecutionError(KbridgeError, RuntimeError):
    """TensorRT refused a shape or an enqueue (its log above says why)."""


def _activation_bytes(engine) -> int:
    for name in ("device_memory_size_v2", "device_memory_size"):
        v = getattr(engine, name, None)
        if v is not None:
            return int(v() if callable(v) else v)
    raise RuntimeUnavailable("this TensorRT reports no device memory size")


def _point(ctx, buf: torch.Tensor) -> None:
    if hasattr(ctx, "set_device_memory"):
        ctx.set_device_memory(buf.data_ptr(), buf.numel())
    else:  # TensorRT 10.0
        ctx.device_memory = buf.data_ptr()


class SharedScratch:
    """One activation buffer for the contexts of the engines that never run at the same time."""

    def __init__(self, device: torch.device):
        self.device, self.buf, self.contexts, self.frozen = device, None, [], False

    def attach(self, ctx, nbytes: int) -> torch.Tensor | None:
        """Point ``ctx`` at the shared buffer, growing it (and re-pointing the others) while no graph
        holds its address; None when it is too small and frozen (the caller allocates its own)."""
        if self.buf is None or self.buf.numel() < nbytes:
            if self.frozen:
                return None
            self.buf = None  # the old one goes before the new one is allocated
            self.buf = torch.empty(max(1, nbytes), dtype=torch.uint8, device=self.device)
            for c in self.contexts:
                _point(c, self.buf)
        self.contexts.append(ctx)
        _point(ctx, self.buf)
        return self.buf


_SHARED: "weakref.WeakValueDictionary[tuple, SharedScratch]" = weakref.WeakValueDictionary()
"""(device, group) → its scratch, alive while a runner holds it (a released pipeline frees it)."""


def shared_scratch(device: torch.device, group: str) -> SharedScratch:
    key = (str(device), group)
    s = _SHARED.get(key)
    if s is None:
        s = _SHARED[key] = SharedScratch(device)
    return s


def scratch_group(spec: ExportSpec) -> str:
    """SDXL base and refiner engines share one buffer (the render thread), the CLIP towers another."""
    return "scorer" if spec.name.startswith("clip") else "render"


class TrtRunner:
    def __init__(self, engine_path: Path, spec: ExportSpec, device: str = "cuda:0", fp16: bool = False,
                 cuda_graph: bool = True, max_graphs: int = 8):
        try:
            import tensorrt as trt
        except ImportError as e:
            raise RuntimeUnavailable("the tensorrt package is not installed (pip install 'kbridge[tensorrt]')") from e
        if not torch.cuda.is_available():
            raise RuntimeUnavailable("needs a CUDA GPU: TensorRT engines run on the GPU they were built for")
        self.trt = trt
        self.spec, self.device, self.cuda_graph, self.max_graphs = spec, cuda_device(device), cuda_graph, max_graphs
        self.float_dtype = torch.float16 if fp16 else torch.float32
        with on_device(self.device):
            rt = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = rt.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise RuntimeUnavailable(f"{engine_path}: cannot deserialize (built by another TensorRT or GPU?)")
            self.need = _activation_bytes(self.engine)
            self.shared = shared_scratch(self.device, scratch_group(spec))
            self.own: torch.Tensor | None = None  # only when the shared one is frozen and too small
            self.stream = torch.cuda.Stream(self.device)
            self.eager = self._context()  # signatures without a graph of their own
        self._slots: dict[tuple, tuple[dict, dict, object, torch.cuda.CUDAGraph | None]] = {}

    def _context(self):
        ctx = self.engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if ctx is None:
            raise RuntimeUnavailable(f"{self.spec.name}: TensorRT could not create an execution context")
        if self.own is None and self.shared.attach(ctx, self.need) is None:
            log.warning("%s: the shared activation buffer is already captured by CUDA graphs and too small; "
                        "this engine gets its own (%d MB)", self.spec.name, self.need >> 20)
            self.own = torch.empty(max(1, self.need), dtype=torch.uint8, device=self.device)
        if self.own is not None:
            _point(ctx, self.own)
        return ctx

    def _enqueue(self, ctx) -> None:
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise TrtExecutionError(f"{self.spec.name}: TensorRT enqueue failed")

    def _slot(self, inputs: dict[str, torch.Tensor]):
        sig = tuple(tuple(inputs[t.name].shape) for t in self.spec.inputs)
        if sig in self._slots:
            return self._slots[sig]
        dims = self.spec.dims_of(inputs)
        graphed = self.cuda_graph and len([s for s in self._slots.values() if s[3] is not None]) < self.max_graphs
        with on_device(self.device):
            ins = {t.name: torch.empty(tuple(inputs[t.name].shape), device=self.device,
                                       dtype=torch.int64 if t.dtype == "int64" else self.float_dtype)
                   for t in self.spec.inputs}
            outs = {t.name: torch.empty(self.spec.shape(t, dims), device=self.device, dtype=self.float_dtype)
                    for t in self.spec.outputs}
            ctx = self._context() if graphed else self.eager
            graph = None
            if graphed:
                with torch.cuda.stream(self.stream):
                    self._bind(ctx, ins, outs)
                    self._enqueue(ctx)  # warm-up: lazy allocations happen here
                    if self.own is None:
                        self.shared.frozen = True  # the graph holds the buffer's address from now on
                    graph = torch.cuda.CUDAGraph()
                    # thread_local: other threads (the LMM on another GPU) keep launching meanwhile
                    with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                        self._enqueue(ctx)
                self.stream.synchronize()
            elif self.cuda_graph:
                log.debug("%s: %d CUDA graphs captured; shape %s runs ungraphed", self.spec.name, self.max_graphs, sig)
        self._slots[sig] = (ins, outs, ctx, graph)
        return self._slots[sig]

    def _bind(self, ctx, ins: dict, outs: dict) -> None:
        for name, x in ins.items():
            if not ctx.set_input_shape(name, tuple(x.shape)):
                raise TrtExecutionError(f"{self.spec.name}: TensorRT rejected shape {tuple(x.shape)} for {name!r} "
                                        f"(outside the engine's profile?)")
            ctx.set_tensor_address(name, x.data_ptr())
        for name, y in outs.items():
            ctx.set_tensor_address(name, y.data_ptr())

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ins, outs, ctx, graph = self._slot(inputs)
        with on_device(self.device):
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                for name, buf in ins.items():
                    buf.copy_(inputs[name], non_blocking=True)
                if graph is not None:
                    graph.replay()
                else:
                    self._bind(ctx, ins, outs)
                    self._enqueue(ctx)
                result = {k: v.clone() for k, v in outs.items()}
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return result
