"""torch runners: eager, or the same IO module through torch.compile."""
from __future__ import annotations

import torch

from kbridge.export.specs import ExportSpec


def torch_runner(spec: ExportSpec, module: torch.nn.Module, compile: bool = False):
    """``compile``: inductor on CPU needs a C++ compiler; the first call per shape compiles
    (seconds to minutes), so benchmarks time it apart from steady state."""
    fn = torch.compile(module) if compile else module
    ins, outs = spec.input_names(), spec.output_names()

    def run(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return dict(zip(outs, fn(*(inputs[n] for n in ins))))

    return run
