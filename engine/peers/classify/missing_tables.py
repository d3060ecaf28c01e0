"""The reference's missing tables for the Arrow datasets (REFERENCE.md §1.6), drawn as DCP / REP's
dataset classes draw them.

A table is a float tensor of one flag per row of the split's image table: 0 complete, 1 text
missing, 2 image missing. ``int(rows · ratio)`` rows are drawn with Python's ``random.sample``;
type ``text`` flags them 1, ``image`` 2, and ``both`` flags them 1 and then ``int(drawn · 0.5)``
of them (a second ``random.sample`` over the drawn rows) 2. The file name is
``<split name>_missing_<type>_<ratio without the dot>.pt`` (``mmimdb_test_missing_both_07.pt``).

The reference draws from Python's global ``random`` after ``seed_everything(seed)``, splits in the
datamodule's order (train, val, test), and caches the tables on first use. ``write_tables`` replays
that: one ``random.Random(seed)`` stream, the splits in that order. It reproduces the reference's
tables when nothing else drew from ``random`` between the seeding and the datasets' setup (true of
the published code as read, not checked against a table the reference wrote).
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from kbridge.engine.peers.classify.config import ClassifyError

SPLITS = {"mmimdb": ("mmimdb_train", "mmimdb_dev", "mmimdb_test"),
          "food101": ("food101_train", "food101_val", "food101_test"),
          "hatememes": ("hatememes_train", "hatememes_dev", "hatememes_test")}
TYPES = ("text", "image", "both")
BOTH_RATIO = 0.5


def table_name(split: str, kind: str, ratio: float) -> str:
    return f"{split}_missing_{kind}_{str(ratio).replace('.', '')}.pt"


def draw(rows: int, kind: str, ratio: float, rng: random.Random) -> torch.Tensor:
    """One split's table, drawing from ``rng`` exactly as the reference draws from ``random``."""
    if kind not in TYPES:
        raise ClassifyError(f"missing type {kind!r}: use {', '.join(TYPES)}")
    if not 0 <= ratio <= 1:
        raise ClassifyError(f"missing ratio {ratio}: must be within 0 and 1")
    table = torch.zeros(rows)
    if ratio > 0:
        idx = rng.sample(range(rows), int(rows * ratio))
        table[idx] = 1 if kind in ("text", "both") else 2
        if kind == "both":
            table[rng.sample(idx, int(len(idx) * BOTH_RATIO))] = 2
    return table


def arrow_rows(path: Path) -> int:
    import pyarrow as pa

    try:
        with pa.memory_map(str(path), "r") as src:
            return pa.ipc.open_file(src).read_all().num_rows
    except (OSError, pa.ArrowInvalid) as e:
        raise ClassifyError(f"{path}: not an Arrow IPC file ({e})") from None


def write_tables(data: Path, task: str, kind: str, ratio: float, out: Path, seed: int = 0) -> list[Path]:
    """Tables for every split of ``task`` whose ``<split>.arrow`` is in ``data``, in the
    reference's order from one seeded stream (a split that is absent draws nothing, as in the
    reference when its file is absent). Returns the files written."""
    if task not in SPLITS:
        raise ClassifyError(f"unknown task {task!r} (known: {', '.join(SPLITS)})")
    present = [s for s in SPLITS[task] if (Path(data) / f"{s}.arrow").exists()]
    if not present:
        raise ClassifyError(f"{data}: none of {', '.join(s + '.arrow' for s in SPLITS[task])}")
    rng = random.Random(seed)
    Path(out).mkdir(parents=True, exist_ok=True)
    written = []
    for split in present:
        table = draw(arrow_rows(Path(data) / f"{split}.arrow"), kind, ratio, rng)
        torch.save(table, Path(out) / table_name(split, kind, ratio))
        written.append(Path(out) / table_name(split, kind, ratio))
    return written
