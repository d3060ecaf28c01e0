"""Every ``kbridge`` command of docs/classify.md (DCP and REP) runs as written, in a
directory holding the files it names: tiny-width checkpoints saved as Lightning 1.1 saves them,
the tiny CLIP tokenizer as ``./clip-vit-base-patch16``, a small genre dataset ``DIR`` with its
missing config, a kbridge run over it in ``kbridge-out``, and reference-layout Arrow files in
``arrows/``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.engine.peers.classify.test_classify_tables import _arrow
from tests.helpers.publisher_pickles import lightning_ckpt
from tests.helpers.readme_examples import commands, run_example

PAGE, SECTION = "docs/classify.md", "# Downstream classifiers: DCP and REP"
GENRES = {"Drama": (220, 30, 30), "Comedy": (30, 200, 40), "Horror": (30, 40, 220)}


def _checkpoint(path: Path, kind: str, task: str, vocab: int, class_names=None) -> None:
    """Widths of 64 with one head, so the documented commands (no --vision-heads) read the heads
    right by CLIP's width / 64 rule."""
    from kbridge.engine.peers.classify.config import tiny_config
    from kbridge.engine.peers.classify.convert import to_reference
    from kbridge.engine.peers.classify.model import build

    kw = {"class_names": class_names} if class_names else {}
    cfg = tiny_config(kind, task, vocab_size=vocab, vision_width=64, text_width=64, vision_heads=1, text_heads=1,
                      vision_mlp=64, text_mlp=64, **kw)
    lightning_ckpt(path, to_reference(build(cfg).state_dict(), cfg))


def _dataset(root: Path, n: int = 12) -> None:
    (root / "images").mkdir(parents=True)
    names = list(GENRES)
    meta = []
    for i in range(n):
        g = names[i % 3]
        Image.new("RGB", (40, 36), GENRES[g]).save(root / "images" / f"{i}.png")
        meta.append({"file_name": f"images/{i}.png", "labels": [g], "captions": [f"a {g.lower()} film"]})
    (root / "metadata.json").write_text(json.dumps(meta))
    (root / "category.json").write_text(json.dumps({"label_name": names}))


def _missing_and_run(work: Path, n: int = 12) -> None:
    details = {str(i): ([0, 1] if i % 2 else [1, 0]) for i in range(0, n, 3)}
    (work / "missing.json").write_text(json.dumps({"type": "mixed", "missing_ratio": len(details) / n,
                                                   "total": n, "missing_details": details}))
    meta = json.loads((work / "DIR" / "metadata.json").read_text())
    lines = []
    for key, flags in details.items():
        i, g = int(key), meta[int(key)]["labels"][0]
        if flags == [0, 1]:
            cand = {"id": "c0", "source": "generated", "text": f"a {g.lower()} film", "scores": {"total": 0.5}}
        else:
            rel = f"images/DIR/{i}/c0.png"
            (work / "kbridge-out" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 36), GENRES[g]).save(work / "kbridge-out" / rel)
            cand = {"id": "c0", "source": "generated", "image": rel, "scores": {"total": 0.5}}
        lines.append(json.dumps({"sample_id": f"DIR:{i}", "index": i, "missing": "text" if flags == [0, 1] else "image",
                                 "candidates": [cand], "best": "c0"}))
    (work / "kbridge-out").mkdir(exist_ok=True)
    (work / "kbridge-out" / "results.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_dcp):
    from transformers import CLIPTokenizer

    from kbridge.engine.peers.classify.missing_tables import write_tables

    work = tmp_path_factory.mktemp("readme-classify")
    tok = work / "clip-vit-base-patch16"
    CLIPTokenizer.from_pretrained(str(tiny_dcp)).save_pretrained(str(tok))
    vocab = len(CLIPTokenizer.from_pretrained(str(tok)))
    _checkpoint(work / "epoch=…-step=….ckpt", "dcp", "mmimdb", vocab)
    food = tuple(f"dish_{i}" for i in range(101))
    _checkpoint(work / "last.ckpt", "rep", "food101", vocab, class_names=food)
    (work / "class_idx.json").write_text(json.dumps({n: i for i, n in enumerate(food)}))
    _dataset(work / "DIR")
    _missing_and_run(work)
    shutil.copytree(tiny_dcp, work / "models" / "dcp-mmimdb")   # what the first command writes
    (work / "arrows").mkdir()
    for split, rows in (("mmimdb_dev", 6), ("mmimdb_test", 12)):
        _arrow(work / "arrows" / f"{split}.arrow", rows)
    for kind in ("text", "image", "both"):   # what the missing-tables commands write
        write_tables(work / "arrows", "mmimdb", kind, 0.7, work / "tables")
    return work


@pytest.mark.parametrize("command", commands(SECTION, PAGE))
def test_readme_example_runs(command, workspace, monkeypatch):
    r = run_example(command, workspace, monkeypatch)
    if "--json" in command:
        assert json.loads(r.stdout)["results"]["missing"]["all"]["n"] == 12
    if " eval " in command and "--completed" in command:
        assert "completed" in r.output and "4 missing modalities filled" in " ".join(r.output.split())
    if command.count("--missing ") == 3:
        assert "paper row (mmimdb F1-macro ×100, all samples): text 0.7:" in " ".join(r.output.split())


def test_the_section_has_its_examples():
    assert len(commands(SECTION, PAGE)) >= 10
