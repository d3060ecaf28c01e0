"""MaxSim as a padded torch composition (``bmm`` + masked ``amax``): the comparison row for the CUDA
kernel in ``kbridge bench gpu`` (the kernel stays only if it beats this on a GPU).

Same definition as ``maxsim_reference``: for each pair (i, j), the mean over query set i's rows of
the best inner product with any row of document set j; symmetric: the mean of both directions;
an empty set scores 0.
"""
from __future__ import annotations

import numpy as np
import torch


def pad_sets(x: np.ndarray, off: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged rows (x [N, D], offsets [S+1]) → (padded [S, L, D] float32, valid mask [S, L])."""
    off = np.asarray(off, dtype=np.int64)
    lens = np.diff(off)
    s, L = len(lens), max(1, int(lens.max()) if len(lens) else 1)
    rows = np.repeat(np.arange(s), lens)
    cols = np.arange(len(x)) - np.repeat(off[:-1], lens)
    out = torch.zeros(s, L, x.shape[1], dtype=torch.float32, device=device)
    mask = torch.zeros(s, L, dtype=torch.bool, device=device)
    r, c = torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)
    out[r, c] = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
    mask[r, c] = True
    return out, mask


def _direction(a, am, b, bm) -> torch.Tensor:
    # a [P, La, D], b [P, Lb, D] → mean over valid a rows of max over valid b rows: [P]
    s = torch.bmm(a, b.transpose(1, 2)).masked_fill_(~bm[:, None, :], float("-inf"))  # [P, La, Lb]
    best = s.amax(-1).masked_fill_(~am, 0.0)
    n = am.sum(-1)
    out = best.sum(-1) / n.clamp_min(1)
    return torch.where((n > 0) & bm.any(-1), out, torch.zeros_like(out))


def maxsim_pairs_torch(q, q_off, x, x_off, pairs, symmetric: bool = False, device="cpu") -> np.ndarray:
    """float32 [P] scores for ``pairs`` [P, 2] (query set, document set), computed on ``device``."""
    qp, qm = pad_sets(q, q_off, device)
    xp, xm = pad_sets(x, x_off, device)
    p = torch.as_tensor(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), device=device)
    a, am, b, bm = qp[p[:, 0]], qm[p[:, 0]], xp[p[:, 1]], xm[p[:, 1]]
    out = _direction(a, am, b, bm)
    if symmetric:
        out = 0.5 * (out + _direction(b, bm, a, am))
    return out.cpu().numpy()
