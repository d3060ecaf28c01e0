"""Native TensorRT engine runner with CUDA graph replay (CUDA only; the ``tensorrt`` extra).

One execution context; per input-shape signature, static input/output buffers and a CUDA graph
captured after one warm-up launch. A call copies inputs into the static buffers, replays the graph
and returns copies of the outputs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from kbridge.engine.runtime import RuntimeUnavailable
from kbridge.export.specs import ExportSpec

log = logging.getLogger("kbridge.runtime.trt")


class TrtRunner:
    def __init__(self, engine_path: Path, spec: ExportSpec, device: str = "cuda:0", fp16: bool = False,
                 cuda_graph: bool = True):
        try:
            import tensorrt as trt
        except ImportError as e:
            raise RuntimeUnavailable("the tensorrt package is not installed (pip install 'kbridge[tensorrt]')") from e
        if not torch.cuda.is_available():
            raise RuntimeUnavailable("needs a CUDA GPU: TensorRT engines run on the GPU they were built for")
        self.spec, self.device, self.cuda_graph = spec, torch.device(device), cuda_graph
        self.float_dtype = torch.float16 if fp16 else torch.float32
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeUnavailable(f"{engine_path}: cannot deserialize (built by another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        self._slots: dict[tuple, tuple[dict, dict, torch.cuda.CUDAGraph | None]] = {}

    def _slot(self, inputs: dict[str, torch.Tensor]):
        sig = tuple(tuple(inputs[t.name].shape) for t in self.spec.inputs)
        if sig in self._slots:
            return self._slots[sig]
        dims = self.spec.dims_of(inputs)
        ins = {t.name: torch.empty(tuple(inputs[t.name].shape), device=self.device,
                                   dtype=torch.int64 if t.dtype == "int64" else self.float_dtype)
               for t in self.spec.inputs}
        outs = {t.name: torch.empty(self.spec.shape(t, dims), device=self.device, dtype=self.float_dtype)
                for t in self.spec.outputs}
        graph = None
        with torch.cuda.stream(self.stream):
            self._bind(ins, outs)
            self.context.execute_async_v3(self.stream.cuda_stream)  # warm-up: lazy allocations happen here
            if self.cuda_graph:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        self._slots[sig] = (ins, outs, graph)
        return self._slots[sig]

    def _bind(self, ins: dict, outs: dict) -> None:
        for name, x in ins.items():
            self.context.set_input_shape(name, tuple(x.shape))
            self.context.set_tensor_address(name, x.data_ptr())
        for name, y in outs.items():
            self.context.set_tensor_address(name, y.data_ptr())

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ins, outs, graph = self._slot(inputs)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for name, buf in ins.items():
                buf.copy_(inputs[name], non_blocking=True)
            if graph is not None:
                graph.replay()
            else:
                self._bind(ins, outs)
                self.context.execute_async_v3(self.stream.cuda_stream)
            result = {k: v.clone() for k, v in outs.items()}
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return result
