"""The MIRe commands: convert-mire, index build --retriever, bench retrieve, bench report."""
from __future__ import annotations

import json

from tests.helpers.publisher_pickles import mire_pth
from typer.testing import CliRunner

from kbridge.cli.app import app
from kbridge.engine.retrieve.mire.checkpoint import published_state, resolve


def _ckpt(cfg, path):
    enc = resolve("tiny", cfg.cache_dir())
    path.parent.mkdir(parents=True, exist_ok=True)
    mire_pth(path, published_state(enc.model))
    enc.tokenizer.save_pretrained(path.parent)
    return path


def test_convert_mire_and_its_one_line_errors(cfg, tmp_path):
    """The published layout (OmegaConf config pickled) converts without --trust-checkpoint; the
    success line keeps its [models] / [rank] names; a missing file is one line."""
    ok = _ckpt(cfg, tmp_path / "a" / "mire_epoch_1.pth")
    r = CliRunner().invoke(app, ["models", "convert-mire", "--ckpt", str(ok), "--out", str(tmp_path / "ours")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())   # rich wraps long lines
    assert "[models] mire =" in text and "[rank] retriever = \"mire\"" in text
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["kbridge_model"] == "mire"
    r = CliRunner().invoke(app, ["models", "convert-mire", "--ckpt", str(tmp_path / "none.pth"),
                                 "--out", str(tmp_path / "o2")])
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "none.pth: no such file" in lines[0]
    assert not (tmp_path / "o2").exists()


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
    md = render([rep], allow_loaded=True)  # this machine's load decides what BENCHMARKS.md shows, not the test
    assert "late-interaction index vs brute force" in md and "| brute-force MaxSim (kernel)" in md
