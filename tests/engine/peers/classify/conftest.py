"""Fixtures for the classifier tests: tiny twins, a separable synthetic colour dataset, a fake
kbridge run over it."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_colour_dataset(root: Path, n: int, seed: int, missing_ratio: float = 0.6) -> tuple[Path, Path]:
    """``n`` samples of three classes (a solid colour image + "a <colour> photo"), a category.json
    with the three names, and a mixed missing config (reference format)."""
    from PIL import Image

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    meta = []
    for i in range(n):
        c = names[i % 3]
        rgb = tuple(min(255, max(0, v + rng.randint(-25, 25))) for v in COLOURS[c])
        Image.new("RGB", (40 + rng.randint(0, 20), 40), rgb).save(root / "images" / f"{i}.png")
        meta.append({"file_name": f"images/{i}.png", "labels": [c], "captions": [f"a {c} photo"]})
    (root / "metadata.json").write_text(json.dumps(meta))
    (root / "category.json").write_text(json.dumps({"label_name": names, "id2label": dict(enumerate(names)),
                                                    "label2id": {k: i for i, k in enumerate(names)}}))
    idx = list(range(n))
    rng.shuffle(idx)
    chosen = idx[: int(n * missing_ratio)]
    details = {str(i): ([0, 1] if k % 2 == 0 else [1, 0]) for k, i in enumerate(chosen)}
    cfg = {"type": "mixed", "missing_ratio": missing_ratio, "num_missing": len(details), "total": n,
           "missing_indices": sorted(int(k) for k in details), "missing_details": details}
    (root / "missing.json").write_text(json.dumps(cfg))
    return root, root / "missing.json"


@pytest.fixture(scope="session")
def tiny_dcp():
    from kbridge.engine.peers.classify.model import ensure_tiny

    return ensure_tiny("dcp", "mmimdb")


@pytest.fixture(scope="session")
def colour_sets(tmp_path_factory):
    base = tmp_path_factory.mktemp("colours")
    return make_colour_dataset(base / "train", 48, seed=1), make_colour_dataset(base / "test", 30, seed=2)
