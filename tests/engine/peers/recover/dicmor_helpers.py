"""Synthetic MMSA data and reference-layout checkpoints for the DiCMoR tests."""
from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import torch

KEYS = Path(__file__).parent / "data"


def read_tsv(name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """The reference key lists (design notes, keys/*.tsv): key → (shape, dtype name)."""
    out = {}
    for line in (KEYS / f"dicmor_{name}_state_dict_without_bert.tsv").read_text().splitlines():
        k, shape, dtype = line.split("\t")
        out[k] = (tuple(ast.literal_eval(shape)), dtype)
    return out


def write_mmsa(path: Path, n: int = 10, t: int = 12, dims=(32, 5, 20), vocab: int = 100, seed: int = 0,
               labels=None, text_features: bool = False) -> Path:
    """An aligned pickle in MMSA's layout: {train, valid, test} → arrays (numpy only)."""
    rng = np.random.default_rng(seed)

    def split(k: int, off: int) -> dict:
        ids = rng.integers(1, vocab, size=(k, t))
        mask = np.ones((k, t), dtype=np.int64)
        mask[:, t - 2:] = 0  # padded tail
        ids[mask == 0] = 0
        audio = rng.normal(size=(k, t, dims[1])).astype(np.float32)
        audio[0, 0, 0] = -np.inf  # MMSA audio has -inf values; read as 0
        y = np.asarray(labels if labels is not None and off == 0 else rng.uniform(-3, 3, size=k), dtype=np.float32)
        d = {"text_bert": np.stack([ids, mask, np.zeros_like(ids)], 1).astype(np.float64),
             "audio": audio, "vision": rng.normal(size=(k, t, dims[2])).astype(np.float32),
             "raw_text": np.array([f"sample {off + i}" for i in range(k)], dtype=object),
             "id": np.array([f"vid{off + i}$_$0" for i in range(k)], dtype=object),
             "regression_labels": y.reshape(k, 1)}
        if text_features:
            d["text"] = rng.normal(size=(k, t, dims[0])).astype(np.float32)
        return d

    obj = {"test": split(n, 0), "train": split(4, 100), "valid": split(3, 200)}
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def reference_state(cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under every reference name and shape for ``cfg`` (dead keys included)."""
    from kbridge.engine.peers.recover.convert import reference_layout

    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
            for k, (shape, dtype) in reference_layout(cfg).items()}
