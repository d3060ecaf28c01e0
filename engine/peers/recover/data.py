"""MMSA's aligned pickle (``aligned_50.pkl``) and missing patterns.

The pickle is ``{"train" | "valid" | "test": {key: array}}`` with, per split (REFERENCE.md §4.6):
``text_bert`` [N, 3, 50] (BERT ids / mask / segments) or ``text`` [N, 50, 768] (features),
``audio`` [N, 50, D_a], ``vision`` [N, 50, D_v], ``id`` [N], ``regression_labels`` [N] in [−3, 3]
(``raw_text`` is not needed). Audio −inf values become 0, as the reference does.

It is read with a restricted unpickler: only numpy's array/dtype/scalar reconstructors (and
``_codecs.encode``, which protocol-2 pickles use for byte strings) may be named; dicts, lists,
tuples, strings and numbers are native pickle opcodes. Anything else (a class, a function) is
refused, so opening a pickle cannot run code.

A missing pattern is a set of modality names (``text``, ``audio``, ``vision``), written joined by
``+`` (``audio+vision``); ``none`` is the complete pattern. A pattern file is a JSON object
``{sample id: [missing modalities]}``; samples it does not list are complete.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kbridge.engine.errors import KbridgeError
from kbridge.engine.peers.recover.model import MODALITIES

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class RecoverDataError(KbridgeError):
    """A data or missing-pattern file cannot be used."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays and plain containers)")


@dataclass(frozen=True)
class Split:
    ids: list[str]
    labels: np.ndarray
    """[N] float32 sentiment in [−3, 3]."""
    audio: np.ndarray
    vision: np.ndarray
    text: np.ndarray | None
    """[N, T, 768] features, when the pickle has them."""
    text_bert: np.ndarray | None
    """[N, 3, T] int64 BERT inputs, when the pickle has them."""


def read_pickle(path: Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _Restricted(f).load()
    except FileNotFoundError:
        raise RecoverDataError(f"{path}: no such file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise RecoverDataError(f"{path}: not an MMSA pickle: {e}") from None
    if not isinstance(obj, dict):
        raise RecoverDataError(f"{path}: expected a dict of splits, got {type(obj).__name__}")
    return obj


def load_split(path: Path, split: str = "test") -> Split:
    obj = read_pickle(path)
    if split not in obj or not isinstance(obj[split], dict):
        raise RecoverDataError(f"{path}: no split {split!r} (has {sorted(map(str, obj))})")
    s = obj[split]
    need = ("audio", "vision", "regression_labels")
    for k in need:
        if k not in s:
            raise RecoverDataError(f"{path}: split {split!r} lacks {k!r}")
    if "text" not in s and "text_bert" not in s:
        raise RecoverDataError(f"{path}: split {split!r} has neither 'text' nor 'text_bert'")
    audio = np.asarray(s["audio"], dtype=np.float32).copy()
    audio[np.isneginf(audio)] = 0.0
    n = len(audio)
    labels = np.asarray(s["regression_labels"], dtype=np.float32).reshape(n)
    ids = [str(i) for i in s["id"]] if "id" in s else [str(i) for i in range(n)]
    out = Split(ids=ids, labels=labels, audio=audio, vision=np.asarray(s["vision"], dtype=np.float32),
                text=np.asarray(s["text"], dtype=np.float32) if "text" in s else None,
                text_bert=np.asarray(s["text_bert"]).astype(np.int64) if "text_bert" in s else None)
    for k in ("vision", "text", "text_bert"):
        a = getattr(out, k)
        if a is not None and len(a) != n:
            raise RecoverDataError(f"{path}: split {split!r}: {k!r} has {len(a)} rows, audio has {n}")
    if len(ids) != n:
        raise RecoverDataError(f"{path}: split {split!r}: 'id' has {len(ids)} rows, audio has {n}")
    return out


def parse_pattern(text: str) -> frozenset[str]:
    """``audio+vision`` → {"audio", "vision"}; ``none`` → {}. All three missing is refused."""
    t = text.strip().lower()
    names = frozenset() if t in ("none", "") else frozenset(p.strip() for p in t.split("+"))
    bad = names - set(MODALITIES)
    if bad:
        raise RecoverDataError(f"missing pattern {text!r}: unknown modality {sorted(bad)[0]!r} "
                               f"(use text, audio, vision joined by '+', or none)")
    if len(names) == 3:
        raise RecoverDataError(f"missing pattern {text!r}: at least one modality must be available")
    return names


def pattern_name(p: frozenset[str]) -> str:
    return "+".join(m for m in MODALITIES if m in p) or "none"


ALL_PATTERNS = tuple(frozenset(p) for p in ((), ("text",), ("audio",), ("vision",), ("text", "audio"),
                                             ("text", "vision"), ("audio", "vision")))
"""Every pattern with at least one modality available, complete first."""


def read_pattern_file(path: Path, ids: list[str]) -> list[frozenset[str]]:
    """A JSON ``{sample id: [missing modalities]}`` → one pattern per sample of the split."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RecoverDataError(f"{path}: cannot read the missing-pattern file: {e}") from None
    if not isinstance(obj, dict):
        raise RecoverDataError(f"{path}: expected a JSON object {{sample id: [missing modalities]}}")
    known = set(ids)
    per = {}
    for sid, mods in obj.items():
        if sid not in known:
            raise RecoverDataError(f"{path}: sample {sid!r} is not in the data")
        if not isinstance(mods, list) or not all(isinstance(m, str) for m in mods):
            raise RecoverDataError(f"{path}: sample {sid!r}: expected a list of modality names")
        try:
            per[sid] = parse_pattern("+".join(mods))
        except RecoverDataError as e:
            raise RecoverDataError(f"{path}: sample {sid!r}: {e}") from None
    return [per.get(i, frozenset()) for i in ids]


def mask(patterns: list[frozenset[str]]) -> np.ndarray:
    """Patterns → the model's [N, 3] bool input (columns text, audio, vision)."""
    return np.array([[m in p for m in MODALITIES] for p in patterns], dtype=bool).reshape(len(patterns), 3)


# ---------------------------------------------------------------- the paper's missing-rate protocol

RATE_SCHEDULE = {1: (0.1, 0.1), 2: (0.2, 0.2), 3: (0.3, 0.3), 4: (0.5, 0.2), 5: (0.7, 0.1), 6: (0.9, 0.0), 7: (1.0, 0.0)}
"""Missing rate ×10 → (fraction of batches with two modalities missing, fraction with one missing),
counted against round(batches / 10) × 10 (REFERENCE.md §4.4); the rest of the batches are
complete. The mean per-modality missing fraction is the rate, capped at 2/3 (0.7: every batch has
exactly one modality)."""
PUBLISHED_SEEDS = tuple(range(1111, 1120))
"""The reference's train.py seeds, 1111–1119; the paper reports the mean over them."""


def rate_batches(n: int, batch_size: int, rate: float, seed: int) -> list[tuple[np.ndarray, frozenset[str]]]:
    """The paper's protocol as (sample indices, missing modalities) per batch: the samples are
    shuffled into batches of ``batch_size``; the first batches lack two modalities, the next ones
    one, the rest none, as ``RATE_SCHEDULE`` says; each batch's missing modalities are drawn
    uniformly. The draws are ours (numpy, seeded): the same protocol as the reference, not its
    random stream."""
    k = round(rate * 10)
    if k not in RATE_SCHEDULE or abs(rate * 10 - k) > 1e-9:
        raise RecoverDataError(f"--missing-rate {rate}: the paper's protocol has rates 0.1, 0.2, … 0.7")
    two, one = RATE_SCHEDULE[k]
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    denom = float(np.round(len(batches) / 10) * 10) or float(len(batches))  # under 5 batches: their count
    out = []
    n_two = n_one = 0
    for b in batches:
        if n_two / denom < two:
            missing, n_two = 2, n_two + 1
        elif n_one / denom < one:
            missing, n_one = 1, n_one + 1
        else:
            missing = 0
        out.append((b, frozenset(MODALITIES[i] for i in rng.choice(3, missing, replace=False))))
    return out


def rate_patterns(n: int, batch_size: int, rate: float, seed: int) -> list[frozenset[str]]:
    """One pattern per sample (in data order) under the paper's protocol (``rate_batches``)."""
    out: list = [frozenset()] * n
    for b, pat in rate_batches(n, batch_size, rate, seed):
        for i in b:
            out[int(i)] = pat
    return out
