"""Every ``kbridge`` command of the "Retrieve (MIRe)" section of docs/retrieval.md runs as written,
in a directory holding the files it names: ``mire/mire_epoch_1.pth`` saved as MIRe's train_retrieval.py
saves it (OmegaConf config pickled, tokenizer beside it), ``mire.toml``, and for the paper-row
sequence a corpus ``okvqa-corpus`` (the demo set), ``okvqa.toml`` and a labelled ``queries.jsonl``;
with the tiny twins."""
from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from tests.helpers.publisher_pickles import mire_pth
from tests.helpers.readme_examples import commands, run_example

PAGE, SECTION = "docs/retrieval.md", "## Retrieve (MIRe)"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, cfg):
    from kbridge.engine.retrieve.mire.checkpoint import published_state, resolve

    work = tmp_path_factory.mktemp("readme-mire")
    enc = resolve("tiny", cfg.cache_dir())
    (work / "mire").mkdir()
    mire_pth(work / "mire" / "mire_epoch_1.pth", published_state(enc.model))
    enc.tokenizer.save_pretrained(work / "mire")
    (work / "mire.toml").write_text('[rank]\nretriever = "mire"\n')
    from kbridge.engine.retrieve.mire.checkpoint import convert_published

    convert_published(work / "mire" / "mire_epoch_1.pth", work / "models" / "mire")   # what the first line writes
    from kbridge.engine.data import DEMO_DIR

    shutil.copytree(DEMO_DIR, work / "okvqa-corpus")
    (work / "okvqa.toml").write_text('[models]\nmire = "models/mire"\n')
    Image.new("RGB", (40, 40), (150, 90, 40)).save(work / "q.png")
    (work / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in (
        {"id": "1", "text": "What is the cup sitting on?", "image": "q.png", "relevant": ["okvqa-corpus:5"]},
        {"id": "2", "text": "What is the wall made of?", "relevant": ["okvqa-corpus:1", "okvqa-corpus:2"]})) + "\n")
    return work


@pytest.mark.parametrize("command", commands(SECTION, PAGE))
def test_readme_example_runs(command, workspace, monkeypatch):
    r = run_example(command, workspace, monkeypatch)
    if command.startswith("kbridge run"):
        rows = [json.loads(x) for x in (workspace / "RUN_DIR" / "results.jsonl").read_text().splitlines()]
        mire = [c for row in rows for c in row.get("candidates", []) if c.get("retriever") == "mire"]
        assert rows and mire and all(c["source"] == "retrieved" for c in mire)
        assert all(isinstance(c["scores"]["mire_maxsim"], float) and "total" in c["scores"] for c in mire)
    if command.startswith("kbridge index eval"):
        line = " ".join(r.output.split())
        assert line.startswith("2 queries: R@1 ") and "MRR@5" in line


def test_the_section_has_its_examples():
    assert len(commands(SECTION, PAGE)) >= 6
