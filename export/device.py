"""One place that turns a stage's device string into the CUDA device that is current while a
library that binds to "the current device" runs (TensorRT builders, runtimes and execution
contexts, torch-tensorrt, CUDA graph capture): nothing runs on GPU 0 by accident."""
from __future__ import annotations

import contextlib

import torch


def cuda_device(device: str | torch.device) -> torch.device:
    """``"cuda"`` / ``"cuda:N"`` → ``torch.device("cuda", N)`` (a bare ``"cuda"`` means index 0, as
    the config's strings use it); anything else is not a CUDA device."""
    d = torch.device(device)
    if d.type != "cuda":
        raise ValueError(f"{device!r} is not a CUDA device")
    return torch.device("cuda", d.index or 0)


@contextlib.contextmanager
def on_device(device: str | torch.device):
    """Make ``device`` the current CUDA device for the block (a no-op for CPU / meta devices)."""
    d = torch.device(device)
    if d.type != "cuda":
        yield d
        return
    d = cuda_device(d)
    with torch.cuda.device(d):
        yield d
