"""Every ``kbridge`` command of docs/recover.md (DiCMoR) runs as written, in a
directory holding the files it names: MMSA pickles with bert-base token ids (as MMSA ships them),
a reference-layout checkpoint ``pt/dicmor-mosi.pth``, a BERT directory ``./bert-base-uncased`` (the
tiny twin's), a pattern file, and ``dicmor-mosi/`` already converted."""
from __future__ import annotations

import json

import pytest
import torch

from tests.engine.peers.recover.dicmor_helpers import reference_state, write_mmsa
from tests.helpers.readme_examples import commands, run_example

PAGE, SECTION = "docs/recover.md", "# Recover (DiCMoR)"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from kbridge.engine.peers.recover.convert import convert
    from kbridge.engine.peers.recover.model import TINY
    from kbridge.engine.peers.recover.text import tiny_bert

    work = tmp_path_factory.mktemp("readme-dicmor")
    write_mmsa(work / "aligned_50.pkl", n=8, vocab=30522, seed=5)
    (work / "MOSI").mkdir()
    write_mmsa(work / "MOSI" / "aligned_50.pkl", n=8, vocab=30522, seed=6)
    (work / "pt").mkdir()
    torch.save(reference_state(TINY, seed=9), work / "pt" / "dicmor-mosi.pth")
    tiny_bert(work / "bert-base-uncased", hidden=TINY.dims[0])
    convert(work / "pt" / "dicmor-mosi.pth", work / "dicmor-mosi", bert=work / "bert-base-uncased", heads=8)
    (work / "patterns.json").write_text(json.dumps({"vid0$_$0": ["text"], "vid1$_$0": ["audio", "vision"]}))
    return work


@pytest.mark.parametrize("command", commands(SECTION, PAGE))
def test_readme_example_runs(command, workspace, monkeypatch):
    r = run_example(command, workspace, monkeypatch)
    if "--json" in command:
        rows = {p["pattern"]: p["n"] for p in json.loads(r.stdout)["patterns"]}
        assert rows == {"none": 6, "text": 1, "audio+vision": 1, "all": 8}


def test_the_section_has_its_examples():
    assert len(commands(SECTION, PAGE)) >= 4
