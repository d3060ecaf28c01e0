"""torch runners: eager, or the same IO module through torch.compile."""
from __future__ import annotations

import torch

from kbridge.export.specs import ExportSpec


def torch_runner(spec: ExportSpec, module: torch.nn.Module, compile: bool = False, mode: str = "default"):
    """``compile``: inductor on CPU needs a C++ compiler; the first call per shape compiles
    (seconds to minutes), so benchmarks time it apart from steady state. ``mode`` "reduce-overhead" /
    "max-autotune" capture CUDA graphs on a GPU (one per batch shape): the graph's output buffers are
    reused by the next replay, so outputs are cloned and each call marks a new graph step."""
    graphs = compile and mode != "default"
    fn = torch.compile(module, mode=None if mode == "default" else mode) if compile else module
    ins, outs = spec.input_names(), spec.output_names()

    def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
                return {n: y.clone() for n, y in zip(outs, fn(*(inputs[n] for n in ins)))}
            return dict(zip(outs, fn(*(inputs[n] for n in ins))))

    return run
