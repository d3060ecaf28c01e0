"""torch-tensorrt runner (CUDA only; the ``tensorrt`` extra): the IO module compiled through the
dynamo frontend with the spec's min / opt / max shapes."""
from __future__ import annotations

import torch

from kbridge.engine.runtime import RuntimeUnavailable
from kbridge.export.specs import ExportSpec


def torch_tensorrt_runner(spec: ExportSpec, module: torch.nn.Module, device: str = "cuda:0", fp16: bool = False):
    try:
        import torch_tensorrt
    except ImportError as e:
        raise RuntimeUnavailable("torch-tensorrt is not installed (pip install 'kbridge[tensorrt]')") from e
    if not torch.cuda.is_available():
        raise RuntimeUnavailable("needs a CUDA GPU: torch-tensorrt compiles for the local GPU")
    dtype = torch.float16 if fp16 else torch.float32
    module = module.to(device, dtype).eval()
    prof = spec.profile()
    specs = [torch_tensorrt.Input(min_shape=prof[t.name][0], opt_shape=prof[t.name][1], max_shape=prof[t.name][2],
                                  dtype=torch.int64 if t.dtype == "int64" else dtype) for t in spec.inputs]
    compiled = torch_tensorrt.compile(module, ir="dynamo", inputs=specs, enabled_precisions={dtype})
    outs = spec.output_names()

    def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [inputs[t.name].to(device, torch.int64 if t.dtype == "int64" else dtype) for t in spec.inputs]
        with torch.inference_mode():
            return dict(zip(outs, compiled(*args)))

    return run
