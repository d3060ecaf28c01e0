"""The MIRe commands: convert-mire, index build --retriever, bench retrieve, bench report."""
from __future__ import annotations

import argparse
import json

import torch
from typer.testing import CliRunner

from kbridge.cli.app import app
from kbridge.engine.mire.checkpoint import published_state, resolve


def _ckpt(cfg, path, config=None):
    enc = resolve("tiny", cfg.cache_dir())
    obj = {"model": published_state(enc.model), "epoch": 1}
    if config is not None:
        obj["config"] = config
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    enc.tokenizer.save_pretrained(path.parent)
    return path


def test_convert_mire_and_its_one_line_errors(cfg, tmp_path):
    ok = _ckpt(cfg, tmp_path / "a" / "mire_epoch_1.pth")
    r = CliRunner().invoke(app, ["models", "convert-mire", "--ckpt", str(ok), "--out", str(tmp_path / "ours")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["kbridge_model"] == "mire"
    pickled = _ckpt(cfg, tmp_path / "b" / "mire.pth", config=argparse.Namespace(lr=1))
    r = CliRunner().invoke(app, ["models", "convert-mire", "--ckpt", str(pickled), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "--trust-checkpoint" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["models", "convert-mire", "--ckpt", str(pickled), "--out", str(tmp_path / "o2"),
                                 "--trust-checkpoint"])
    assert r.exit_code == 0, r.output


def test_index_build_refuses_an_unknown_retriever(tmp_path):
    r = CliRunner().invoke(app, ["index", "build", "--retriever", "plaid", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "rank.retriever" in r.output and len(r.output.strip().splitlines()) == 1


def test_bench_retrieve_writes_a_report_that_renders(tmp_path):
    from kbridge.benchmarks.report import render

    out = tmp_path / "retrieve.json"
    r = CliRunner().invoke(app, ["bench", "retrieve", "--docs", "1500", "--dim", "32", "--queries", "5",
                                 "--repeat", "1", "--no-save", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    rows = {row["name"]: row for row in rep["rows"]}
    assert rows["brute-force MaxSim (kernel)"]["recall_at_10"] == 1.0
    assert all(0.0 <= row["recall_at_10"] <= 1.0 for row in rep["rows"]) and len(rows) == 4
    md = render([rep])
    assert "late-interaction index vs brute force" in md and "| brute-force MaxSim (kernel) |" in md
