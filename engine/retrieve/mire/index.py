"""The late-interaction index: IVF over document tokens for the shortlist, exact MaxSim to rank it.

PLAID-style in its search, on faiss (fast-plaid / PyLate do not install beside our torch pin; see the
README): faiss k-means clusters the token embeddings into ``cells`` centroids and every token is
filed under its nearest centroid (inverted lists of token ids). A query (token bag Q [n, D]) is
answered in three steps:

1. **cells**: each query token probes its ``ncells`` best centroids; every document with a token in
   a probed cell is a candidate;
2. **centroid interaction**: each candidate is scored with its tokens replaced by their centroids,
   ``mean_q max_t (q · c(t))`` (PLAID's approximation), and the best ``ndocs`` are kept;
3. **exact re-rank**: those are scored by our MaxSim kernel (``kbridge.kernels.maxsim``) on the stored
   float16 token embeddings, and the top k returned.

Scores are MaxSim as our kernel defines it: the mean over query tokens of the best dot product
(ColBERT sums; for one query the order is the same). Stored: ``centroids.npy`` [C, D] float32,
``codes.npy`` [T] int32 (each token's cell), ``tokens.npy`` [T, D] float16 (memory-mapped on load),
``offsets.npy`` [N + 1] int64 (document d is tokens offsets[d]:offsets[d + 1]), ``meta.json``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kbridge.engine.errors import KbridgeError
from kbridge.kernels.maxsim import maxsim_all, maxsim_pairs, pack


class LateIndexError(KbridgeError):
    """The late-interaction index is missing, torn, or does not fit the query."""


def default_cells(n_tokens: int) -> int:
    """A power of two near 4·√T (PLAID takes 16·√T; a quarter of that trains 16× faster and the
    exact re-rank recovers the recall), at most T / 8 so that every cell has tokens."""
    c = 2 ** max(0, int(math.log2(max(1.0, 4 * math.sqrt(n_tokens)))))
    return int(max(1, min(c, n_tokens // 8)))


@dataclass
class LateIndex:
    centroids: np.ndarray  # [C, D] float32
    codes: np.ndarray  # [T] int32
    tokens: np.ndarray  # [T, D] float16
    offsets: np.ndarray  # [N + 1] int64

    def __post_init__(self):
        self.doc_of = np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int64), np.diff(self.offsets))  # [T]
        order = np.argsort(self.codes, kind="stable")
        self._cell_docs = np.split(self.doc_of[order], np.cumsum(np.bincount(self.codes, minlength=len(
            self.centroids)))[:-1])  # per cell: the documents of its tokens (with repeats)

    @property
    def size(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @classmethod
    def build(cls, docs: list[np.ndarray], cells: int | None = None, niter: int = 10, seed: int = 123,
              max_train: int | None = None) -> "LateIndex":
        """docs: token bags [n_i, D] (unit rows) → the index. Spherical k-means (``niter`` rounds; PLAID
        runs 20) trains on at most ``max_train`` tokens (default 40 per cell, faiss' minimum for a
        stable clustering) drawn uniformly from the corpus; then every token is assigned."""
        from kbridge.engine.retrieve.index import faiss_module

        faiss = faiss_module()
        x, off = pack(docs)
        if len(x) == 0:
            raise LateIndexError("nothing to index: every document is empty")
        cells = cells or default_cells(len(x))
        max_train = max_train or 40 * cells
        rng = np.random.default_rng(seed)
        train = x if len(x) <= max_train else x[np.sort(rng.choice(len(x), max_train, replace=False))]
        km = faiss.Kmeans(x.shape[1], cells, niter=niter, seed=seed, spherical=True, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=max(40, max_train // cells))
        km.train(np.ascontiguousarray(train))
        _, codes = km.index.search(x, 1)
        return cls(km.centroids.astype(np.float32), codes[:, 0].astype(np.int32), x.astype(np.float16), off)

    def candidates(self, q: np.ndarray, ncells: int) -> np.ndarray:
        """Documents with a token in one of the cells probed by the query tokens q [n, D]."""
        s = q @ self.centroids.T  # [n, C]
        ncells = min(ncells, s.shape[1])
        probed = np.unique(np.argpartition(-s, ncells - 1, axis=1)[:, :ncells])
        hit = np.zeros(self.size, bool)
        hit[np.concatenate([self._cell_docs[c] for c in probed])] = True
        return np.flatnonzero(hit)

    def _token_rows(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The token ids of ``docs`` concatenated [sum n_d] and their offsets [len(docs) + 1]."""
        lens = self.offsets[docs + 1] - self.offsets[docs]
        off = np.zeros(len(docs) + 1, np.int64)
        np.cumsum(lens, out=off[1:])
        # element j of document i sits at off[i] + j and is token offsets[d_i] + j
        return np.repeat(self.offsets[docs] - off[:-1], lens) + np.arange(off[-1]), off

    def approx_scores(self, q: np.ndarray, docs: np.ndarray) -> np.ndarray:
        """Centroid interaction: mean_q max over each document's tokens of q · centroid(token) → [len(docs)]."""
        toks, off = self._token_rows(docs)
        if len(toks) == 0:
            return np.zeros(len(docs), np.float32)
        g = (q @ self.centroids.T)[:, self.codes[toks]]  # [n, sum lens]
        return np.maximum.reduceat(g, off[:-1], axis=1).mean(0)

    def exact_scores(self, q: np.ndarray, docs: np.ndarray, backend: str = "auto") -> np.ndarray:
        """MaxSim of q [n, D] against the stored tokens of ``docs`` (the kernel, float16 inputs)."""
        toks, off = self._token_rows(docs)
        q16 = np.ascontiguousarray(q, dtype=np.float16)
        pairs = np.stack([np.zeros(len(docs), np.int64), np.arange(len(docs))], 1)
        return maxsim_pairs(q16, np.array([0, len(q)], np.int64), np.ascontiguousarray(self.tokens[toks]),
                            off, pairs, backend=backend)

    def search(self, q: np.ndarray, k: int, ncells: int = 4, ndocs: int = 256,
               backend: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One query bag q [n, D] → (scores [≤ k] descending, document ids [≤ k], shortlist ids)."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise LateIndexError(f"query tokens must be [n, {self.dim}], got {q.shape}")
        if k <= 0 or len(q) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        cand = self.candidates(q, ncells)
        if len(cand) > ndocs:
            approx = self.approx_scores(q, cand)
            cand = cand[np.argpartition(-approx, ndocs - 1)[:ndocs]]
        exact = self.exact_scores(q, cand, backend)
        top = np.lexsort((cand, -exact))[:k]  # descending score, ties by id
        return exact[top], cand[top], cand

    def brute_force(self, q: np.ndarray, k: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Exact MaxSim against every document (the reference for recall)."""
        q16 = np.ascontiguousarray(q, dtype=np.float16)
        s = maxsim_all(q16, np.array([0, len(q)], np.int64), self.tokens, self.offsets, backend=backend)[0]
        top = np.lexsort((np.arange(len(s)), -s))[:k]
        return s[top], top

    def save(self, out: Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("centroids", "codes", "tokens", "offsets"):
            tmp = out / f".{name}.tmp.npy"
            np.save(tmp, getattr(self, name))
            tmp.replace(out / f"{name}.npy")
        meta = {"kind": "ivf-maxsim", "documents": self.size, "tokens": int(len(self.codes)),
                "cells": int(len(self.centroids)), "dim": self.dim}
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        return out

    @classmethod
    def load(cls, path: Path) -> "LateIndex":
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())
            arrays = {n: np.load(path / f"{n}.npy", mmap_mode="r" if n == "tokens" else None)
                      for n in ("centroids", "codes", "tokens", "offsets")}
        except (OSError, ValueError) as e:
            raise LateIndexError(f"{path}: no readable late-interaction index ({e}); build it with "
                                 f"`kbridge index build --retriever mire`") from e
        idx = cls(**arrays)
        if idx.size != meta.get("documents") or len(idx.codes) != len(idx.tokens):
            raise LateIndexError(f"{path}: the index files disagree with meta.json; rebuild it")
        return idx
