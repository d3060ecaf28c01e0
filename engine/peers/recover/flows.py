"""DiCMoR's normalising flows: a stack of affine couplings applied per time step.

What the reference builds (REFERENCE.md §4.2) and what we do with it:

- One flow per modality, ``n_flow`` (32) affine couplings on d channels. The features [B, d, T]
  are treated as an image [B, d, T, 1], so every coupling is a 1×1 convolution: each time step is
  transformed on its own, channel-wise.
- Each reference ``Flow`` also owns an ActNorm (``loc``, ``scale``, ``initialized``) and an
  invertible 1×1 convolution (``invconv.weight``), and each ``Block`` a ``prior``; the reference's
  forward and reverse **never call them**. They are dead parameters: we do not build them, and
  the checkpoint converter drops them by name (convert.py ``DEAD``).
- The reference never permutes channels either, so the first d/2 channels ("a-half") pass through
  all 32 couplings unchanged: ``flow_m.reverse(flow_x.forward(h))`` returns ``h``'s first d/2
  channels exactly, and only the b-half is actually mapped. ``permute=False`` (the default, the
  only setting that matches published checkpoints) reproduces this.
- ``permute=True`` is the fixed variant: the halves swap after every coupling, so consecutive
  couplings alternate which half they transform and, for n_flow ≥ 2, every channel is mapped.
  Checkpoints trained without it are not meaningful with it.

Coupling (per time step): split x into halves a, b; (log_s, t) = net(a), net = 1×1 conv
(d/2 → h), ReLU, 1×1 conv (h → h), ReLU, ZeroConv (h → d); s = sigmoid(log_s + 2);
b' = (b + t)·s; log|det| = Σ log s. Reverse: b = b'/s − t.
"""
from __future__ import annotations

import torch
from torch import nn


class ZeroConv(nn.Module):
    """1×1 conv whose output is scaled by exp(3·scale), per output channel; zero-initialised so a
    fresh coupling starts near identity. (The reference's ``padding`` argument is never applied.)"""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1)
        self.scale = nn.Parameter(torch.zeros(1, c_out, 1, 1))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(self.scale * 3)


class Coupling(nn.Module):
    """One affine coupling on [B, d, T, 1]."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        if d % 2:
            raise ValueError(f"flow width must be even, got {d}")
        # names net.0 / net.2 / net.4 are the checkpoint's (ReLUs sit at 1 and 3)
        self.net = nn.Sequential(nn.Conv2d(d // 2, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                                 ZeroConv(hidden, d))
        for i in (0, 2):
            nn.init.normal_(self.net[i].weight, 0, 0.05)
            nn.init.zeros_(self.net[i].bias)

    def _scale_shift(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_s, t = self.net(a).chunk(2, 1)
        return torch.sigmoid(log_s + 2), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x.chunk(2, 1)
        s, t = self._scale_shift(a)
        return torch.cat([a, (b + t) * s], 1), torch.log(s).flatten(1).sum(1)

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        a, b = y.chunk(2, 1)
        s, t = self._scale_shift(a)
        return torch.cat([a, b / s - t], 1)


def _swap(x: torch.Tensor) -> torch.Tensor:
    """Exchange the two channel halves (its own inverse)."""
    h = x.shape[1] // 2
    return torch.cat([x[:, h:], x[:, :h]], 1)


class Flow(nn.Module):
    """``n_flow`` couplings on sequence features [B, d, T] (see the module docstring)."""

    def __init__(self, d: int, n_flow: int, hidden: int, permute: bool = False):
        super().__init__()
        self.couplings = nn.ModuleList(Coupling(d, hidden) for _ in range(n_flow))
        self.permute = permute

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, d, T] → (z [B, d, T], log|det ∂z/∂x| [B])."""
        h = x.unsqueeze(-1)
        logdet = x.new_zeros(x.shape[0])
        for c in self.couplings:
            h, ld = c(h)
            logdet = logdet + ld
            if self.permute:
                h = _swap(h)
        return h.squeeze(-1), logdet

    def reverse(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, d, T] → x [B, d, T], the exact inverse of ``forward``."""
        h = z.unsqueeze(-1)
        for c in reversed(self.couplings):
            if self.permute:
                h = _swap(h)
            h = c.reverse(h)
        return h.squeeze(-1)
