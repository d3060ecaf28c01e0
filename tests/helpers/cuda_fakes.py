"""CUDA at its boundary, for tests of GPU code paths on the CPU: which device is current, and one
small export spec with a dynamic batch and a static int64 input.

The ``meta`` device stands in for a GPU where a test needs "not the CPU": torch refuses to mix a
CPU tensor into a meta computation exactly as it refuses to mix it into a CUDA one.
"""
from __future__ import annotations

import torch


class CudaDevice:
    """torch.cuda.device at its boundary: records which device is current inside the block."""

    current = [0]

    def __init__(self, d):
        self.idx = torch.device(d).index if not isinstance(d, int) else d

    def __enter__(self):
        self.prev = CudaDevice.current[0]
        CudaDevice.current[0] = self.idx

    def __exit__(self, *a):
        CudaDevice.current[0] = self.prev


def example_spec(opt_batch):
    """A float [batch, 4, 8, 8] input, an int64 [batch, 77] one (ids below 9), a float [batch, 4, 8, 8]
    output; the batch from 1 to 2, optimal at ``opt_batch``."""
    from kbridge.export.specs import Axis, ExportSpec, TensorSpec

    return ExportSpec("m", (TensorSpec("x", ("batch", 4, 8, 8)), TensorSpec("ids", ("batch", 77), "int64", 9)),
                      (TensorSpec("y", ("batch", 4, 8, 8)),), (Axis("batch", 1, opt_batch, 2, 2),))
