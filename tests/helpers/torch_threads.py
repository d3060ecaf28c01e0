"""One torch intra-op thread while tiny twins run: they gain nothing from a second thread, and on
two loaded cores two threads wait on each other (measured: a DiCMoR training step of the short
twin 0.02-0.07 s with one thread, 2.7-3.5 s with two, load average 5.5)."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
