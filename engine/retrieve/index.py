"""A faiss index of unit embeddings: exact inner product by default, IVF-PQ for large corpora.

faiss is imported lazily: install ``kbridge[cpu]`` (faiss-cpu) or, on a GPU box, ``kbridge[gpu]``
(faiss-gpu; the two must not share an environment). Search runs on the CPU unless a GPU is asked
for (``use_gpu=True``): the engine searches k=3 for a handful of queries, where the CPU wins and
a GPU copy would cost 1.5 GiB of faiss temp memory per resource. A GPU copy goes to the given
device (the stage's, never GPU 0 by default), through one shared resource per device with a small
temp buffer; IVF-PQ goes only when faiss-gpu supports its sub-quantiser count. The index is always
saved from, and loaded to, the CPU form, and loaded memory-mapped (flat codes and IVF lists stay on
disk until touched).

Kinds: ``flat`` (IndexFlatIP, exact), ``ivfpq`` (IndexIVFPQ with an exact inner-product coarse
quantiser; approximate, D / 8 bytes per vector, 32× less than float32), ``auto`` (flat below
``ivfpq_min`` vectors, IVF-PQ from there).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kbridge.engine.errors import Unavailable

log = logging.getLogger(__name__)


class IndexUnavailable(Unavailable, ImportError):
    """faiss is not installed."""


def faiss_module():
    try:
        import faiss
    except ImportError as e:
        raise IndexUnavailable("the faiss index needs faiss: pip install 'kbridge[cpu]' (faiss-cpu), or "
                               "'kbridge[gpu]' (faiss-gpu) on a GPU box") from e
    return faiss


def gpu_count() -> int:
    faiss = faiss_module()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def ivfpq_shape(n: int, dim: int) -> tuple[int, int, int]:
    """(lists, sub-quantisers, bits per code) for n vectors of width dim.

    About 4·√n lists and 8-bit codes, both reduced so that k-means gets at least 39 training
    points per centroid (faiss' own rule); one sub-quantiser per 32 bytes of float32 vector,
    a divisor of dim.
    """
    lists = max(1, min(int(4 * math.sqrt(n)), n // 39))
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    bits = max(1, min(8, int(math.log2(max(2, n // 39)))))
    return lists, m, bits


GPU_PQ_M = frozenset((1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96))
"""Code sizes (bytes per vector = sub-quantisers at 8 bits) faiss-gpu's IVF-PQ supports
(``IVFPQ::isSupportedPQCodeLength``, faiss/gpu/impl/IVFPQ.cu; 56 / 64 / 96 only with float16 lookup
tables). Without the interleaved layout (GpuClonerOptions' default) it also needs 8 bits per code."""


def gpu_ivfpq_refusal(m: int, bits: int) -> str | None:
    """Why faiss-gpu cannot hold an IVF-PQ index of ``m`` sub-quantisers × ``bits``, or None."""
    if bits != 8:
        return f"{bits} bits per code (faiss-gpu's IVF-PQ needs 8)"
    if m not in GPU_PQ_M:
        return f"{m} sub-quantisers (faiss-gpu's IVF-PQ supports {', '.join(map(str, sorted(GPU_PQ_M)))})"
    return None
GPU_TEMP_BYTES = 64 << 20
"""faiss temp memory per GPU resource (its default is up to 1.5 GiB; small searches need little)."""
_RESOURCES: dict[int, object] = {}


def gpu_resources(faiss, device_id: int):
    """One StandardGpuResources per GPU, shared by every index on it."""
    if device_id not in _RESOURCES:
        res = faiss.StandardGpuResources()
        res.setTempMemory(GPU_TEMP_BYTES)
        _RESOURCES[device_id] = res
    return _RESOURCES[device_id]


def gpu_device_id(device: str) -> int:
    """"cuda:N" → N; "cuda" → 0; anything else is not a GPU."""
    d = str(device)
    if not d.startswith("cuda"):
        raise IndexUnavailable(f"a GPU index needs a cuda device, not {device!r}")
    return int(d.split(":", 1)[1]) if ":" in d else 0


@dataclass
class EmbeddingIndex:
    index: object
    """The faiss index (on the GPU when one is used for search)."""
    kind: str
    dim: int

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str = "auto", ivfpq_min: int = 100_000, nprobe: int = 16,
              use_gpu: bool | None = None, device: str = "cuda:0") -> "EmbeddingIndex":
        """vectors: [N, D] (unit rows for cosine) → an index holding them with ids 0..N-1."""
        faiss = faiss_module()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"index vectors must be [N, D], got {x.shape}")
        n, dim = x.shape
        if kind == "auto":
            kind = "ivfpq" if n >= ivfpq_min else "flat"
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivfpq":
            lists, m, bits = ivfpq_shape(n, dim)
            index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, lists, m, bits, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
            index.nprobe = min(nprobe, lists)
        else:
            raise ValueError(f"unknown index kind {kind!r} (known: auto, flat, ivfpq)")
        index.add(x)
        return cls(index, kind, dim)._to_gpu(use_gpu, device)

    def _to_gpu(self, use_gpu: bool | None, device: str = "cuda:0") -> "EmbeddingIndex":
        """``use_gpu``: True copies the index to ``device``; None / False keep it on the CPU."""
        if not use_gpu:
            return self
        dev = gpu_device_id(device)
        if gpu_count() <= dev:
            raise IndexUnavailable(f"a GPU index on {device} needs faiss-gpu and that GPU visible "
                                   f"({gpu_count()} faiss GPU(s) seen)")
        faiss = faiss_module()
        opts = faiss.GpuClonerOptions()
        if self.kind == "ivfpq":
            pq = faiss.downcast_index(self.index).pq
            m, why = int(pq.M), gpu_ivfpq_refusal(int(pq.M), int(pq.nbits))
            if why:
                log.warning("IVF-PQ with %s is not supported on the GPU; searching on the CPU", why)
                return self
            opts.useFloat16 = m > 48  # 56 / 64 / 96 need float16 lookup tables
        self.index = faiss.index_cpu_to_gpu(gpu_resources(faiss, dev), dev, self.index, opts)
        log.debug("faiss index on GPU %d", dev)
        return self

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [Q, D] → (scores [Q, k] descending, ids [Q, k]); id -1 where fewer than k exist."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query width {q.shape[1]} does not match the index ({self.dim})")
        if k <= 0 or len(q) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        return self.index.search(q, k)

    def save(self, path: Path) -> Path:
        faiss = faiss_module()
        index = self.index
        if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
            index = faiss.index_gpu_to_cpu(index)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        faiss.write_index(index, str(tmp))
        tmp.replace(path)  # atomic: a killed build never leaves a torn index
        return path

    @classmethod
    def load(cls, path: Path, mmap: bool = True, use_gpu: bool | None = None, device: str = "cuda:0") -> "EmbeddingIndex":
        faiss = faiss_module()
        flags = 0
        if mmap:
            with open(path, "rb") as f:
                ivf = f.read(4).startswith(b"Iw")  # faiss' fourcc: "Iw.." for the IVF family
            # IVF: the inverted lists are mapped; flat: the code array (the two flags do not combine)
            flags = (faiss.IO_FLAG_MMAP if ivf else getattr(faiss, "IO_FLAG_MMAP_IFC", 0)) | faiss.IO_FLAG_READ_ONLY
        index = faiss.read_index(str(path), flags)
        kind = "ivfpq" if "IVF" in type(index).__name__ else "flat"
        return cls(index, kind, index.d)._to_gpu(use_gpu, device)
