"""Batched late-interaction (MaxSim) scores of ragged embedding sets.

Sets are passed *packed*: every set's rows concatenated into one ``[N, D]`` float32 or float16
array, plus ``offsets [n + 1]`` (set ``i`` is rows ``offsets[i]:offsets[i + 1]``); ``pack`` builds
that from a list of arrays.

    maxsim(Q, X)    = mean over q in Q of max over x in X of q·x
    symmetric(Q, X) = (maxsim(Q, X) + maxsim(X, Q)) / 2

An empty set on either side scores **0.0** (there is no evidence of a match). With unit vectors
the scores are cosine similarities in [-1, 1].

Backends: ``"cpu"`` (the C++ kernel, ``kbridge._kernels``: register-blocked, OpenMP over pairs, the
similarity tile never stored), ``"cuda"`` (``kbridge._kernels_cuda``, built when a CUDA toolkit was
found at install time; raises ``KernelUnavailable`` without a GPU), ``"numpy"`` (the reference
loop), and ``"auto"`` (the CPU kernel, or numpy when the extension is not built).
"""
from __future__ import annotations

import importlib
import logging
from typing import Sequence

import numpy as np
from kbridge.engine.errors import Unavailable

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda", "numpy")


class KernelUnavailable(Unavailable, RuntimeError):
    """The requested native kernel is not built, or needs hardware this machine lacks."""


def load_module(name: str):
    try:
        return importlib.import_module(f"kbridge.{name}")
    except ImportError as e:
        raise KernelUnavailable(f"kbridge.{name} is not built ({e}); reinstall kbridge with a C++ compiler "
                                f"(pip install -e .)") from e


def cpu_available() -> bool:
    try:
        load_module("_kernels")
        return True
    except KernelUnavailable:
        return False


def cuda_status() -> tuple[bool, str]:
    """(usable, reason): whether the CUDA kernel is built and a CUDA device is visible."""
    try:
        mod = load_module("_kernels_cuda")
    except KernelUnavailable as e:
        return False, f"the CUDA kernel is not built (no CUDA toolkit at install time): {e}"
    n, why = mod.devices()
    return (True, "") if n > 0 else (False, f"needs a CUDA GPU: {why}")


def pack(sets: Sequence[np.ndarray], dim: int | None = None, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """List of [n_i, D] arrays (n_i may be 0) → (rows [sum n_i, D], offsets [len(sets) + 1] int64)."""
    sets = [np.asarray(s, dtype=dtype).reshape(-1, dim if dim is not None else np.shape(s)[-1]) for s in sets]
    if dim is None:
        dim = sets[0].shape[1] if sets else 0
    off = np.zeros(len(sets) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sets], out=off[1:])
    rows = np.concatenate(sets, axis=0) if sets else np.zeros((0, dim), dtype)
    return np.ascontiguousarray(rows, dtype=dtype), off


def _prepare(q, q_off, x, x_off):
    q, x = np.asarray(q), np.asarray(x)
    if q.dtype != x.dtype:
        raise TypeError(f"query and document sets must share a dtype ({q.dtype} vs {x.dtype})")
    if q.dtype not in (np.float32, np.float16):
        raise TypeError(f"MaxSim takes float32 or float16 embeddings, not {q.dtype}")
    if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1]:
        raise ValueError(f"embeddings must be [N, D] with one D (got {q.shape} and {x.shape})")
    q_off = np.ascontiguousarray(q_off, dtype=np.int64)
    x_off = np.ascontiguousarray(x_off, dtype=np.int64)
    for off, rows, name in ((q_off, len(q), "query"), (x_off, len(x), "document")):
        if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != rows or np.any(np.diff(off) < 0):
            raise ValueError(f"{name} offsets must run non-decreasing from 0 to {rows}")
    return np.ascontiguousarray(q), q_off, np.ascontiguousarray(x), x_off


def _suffix(a: np.ndarray) -> str:
    return "f32" if a.dtype == np.float32 else "f16"


def _bits(a: np.ndarray) -> np.ndarray:
    """float16 arrays go to the C++ kernel as their uint16 bit patterns."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def maxsim_pairs(q, q_off, x, x_off, pairs, symmetric: bool = False, backend: str = "auto",
                 device: int = 0) -> np.ndarray:
    """Scores of explicit (query set, document set) pairs: ``pairs [P, 2]`` → float32 ``[P]``.
    ``device``: the CUDA device index for the "cuda" backend (its own stream; the caller's current
    device is restored).

    This is candidate scoring: each sample's set against its own candidates' sets only.
    """
    q, q_off, x, x_off = _prepare(q, q_off, x, x_off)
    pairs = np.ascontiguousarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) and (pairs[:, 0].min() < 0 or pairs[:, 0].max() >= len(q_off) - 1 or
                       pairs[:, 1].min() < 0 or pairs[:, 1].max() >= len(x_off) - 1):
        raise ValueError("a pair refers to a set that does not exist")
    backend = _pick(backend)
    if backend == "numpy":
        return maxsim_reference(q, q_off, x, x_off, pairs, symmetric)
    if backend == "cuda":
        ok, why = cuda_status()
        if not ok:
            raise KernelUnavailable(why)
        return load_module("_kernels_cuda").maxsim_pairs_f32(q.astype(np.float32), q_off, x.astype(np.float32), x_off,
                                                         pairs, symmetric, int(device))
    fn = getattr(load_module("_kernels"), f"maxsim_pairs_{_suffix(q)}")
    return fn(_bits(q), q_off, _bits(x), x_off, pairs, symmetric)


def maxsim_all(q, q_off, x, x_off, symmetric: bool = False, backend: str = "auto", device: int = 0) -> np.ndarray:
    """Every query set against every document set → float32 ``[n_query_sets, n_doc_sets]``."""
    q, q_off, x, x_off = _prepare(q, q_off, x, x_off)
    backend = _pick(backend)
    if backend in ("numpy", "cuda"):
        nq, nx = len(q_off) - 1, len(x_off) - 1
        grid = np.stack(np.meshgrid(np.arange(nq), np.arange(nx), indexing="ij"), -1).reshape(-1, 2)
        return maxsim_pairs(q, q_off, x, x_off, grid, symmetric, backend, device).reshape(nq, nx)
    fn = getattr(load_module("_kernels"), f"maxsim_all_{_suffix(q)}")
    return fn(_bits(q), q_off, _bits(x), x_off, symmetric)


def _pick(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown MaxSim backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend == "auto":
        if cpu_available():
            return "cpu"
        log.debug("kbridge._kernels is not built; MaxSim falls back to numpy")
        return "numpy"
    return backend


def maxsim_reference(q, q_off, x, x_off, pairs, symmetric: bool = False) -> np.ndarray:
    """The numpy reference: one small matmul per pair (float32 arithmetic), the definition above."""
    out = np.zeros(len(pairs), dtype=np.float32)
    for p, (i, j) in enumerate(np.asarray(pairs).reshape(-1, 2)):
        a = q[q_off[i]:q_off[i + 1]].astype(np.float32)
        b = x[x_off[j]:x_off[j + 1]].astype(np.float32)
        if len(a) == 0 or len(b) == 0:
            continue
        s = a @ b.T  # [n_i, m_j]
        fwd = s.max(axis=1).mean()
        out[p] = 0.5 * (fwd + s.max(axis=0).mean()) if symmetric else fwd
    return out
