"""MIRe with the user's own question (``kbridge index query``), retrieval evaluation against
relevance labels (``kbridge index eval``), and MIRe's inference settings as flags."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kbridge.cli.app import app
from kbridge.engine.retrieve.mire.evaluate import retrieval_metrics

QUESTION = "What is the cup sitting on?"


def test_metrics_by_hand():
    ranked = [["a", "b", "c", "d", "e", "f"], ["x", "y", "z"], ["p"]]
    relevant = [{"c", "f"}, {"x"}, set()]   # the third query has no label: not scored
    m = retrieval_metrics(ranked, relevant)
    assert m["queries"] == 2
    assert m["R@1"] == pytest.approx((0 + 1) / 2) and m["R@5"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["R@10"] == pytest.approx(1.0) and m["P@1"] == pytest.approx(0.5)
    assert m["P@5"] == pytest.approx((1 / 5 + 1 / 5) / 2)
    assert m["MRR@5"] == pytest.approx((1 / 3 + 1) / 2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("mire-query")
    r = CliRunner().invoke(app, ["index", "build", "--retriever", "mire", "--out", str(work / "run")])
    assert r.exit_code == 0, r.output
    Image.new("RGB", (40, 40), (200, 30, 30)).save(work / "q.png")
    return work


def _brute_force(run_dir, text, image, **settings):
    """The ranking by exact MaxSim, computed here: every corpus text encoded as a document, the
    query's token bag against each (max over document tokens, mean over query tokens)."""
    from kbridge.engine.config import build_config
    from kbridge.engine.retrieve.mire.checkpoint import resolve, with_settings

    enc = with_settings(resolve("tiny", build_config("tiny").cache_dir()), **settings)
    items = [json.loads(x) for x in (run_dir / "run" / "index" / "items.jsonl").read_text().splitlines()]
    docs = enc.encode_docs([it["text"] for it in items])
    q = enc.encode_queries([text], [image])[0]
    scores = np.array([float((q.astype(np.float32) @ d.astype(np.float32).T).max(1).mean()) for d in docs])
    return [items[i]["sample_id"] for i in np.argsort(-scores, kind="stable")], np.sort(scores)[::-1]


def test_query_with_your_own_question_is_exact_maxsim(run_dir, monkeypatch):
    monkeypatch.chdir(run_dir)
    r = CliRunner().invoke(app, ["index", "query", "--out", "run", "--text", QUESTION, "--image", "q.png",
                                 "--k", "3", "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    order, scores = _brute_force(run_dir, QUESTION, Image.open(run_dir / "q.png"))
    assert [h["sample_id"] for h in hits] == order[:3]
    np.testing.assert_allclose([h["maxsim"] for h in hits], scores[:3], atol=2e-3)   # index stores float16 tokens
    # MIRe's search settings as flags change the query encoding, and the ranking follows them
    r = CliRunner().invoke(app, ["index", "query", "--out", "run", "--text", QUESTION, "--image", "q.png", "--k", "3",
                                 "--query-maxlen", "64", "--no-attend-mask", "--pad-leak", "--json"])
    assert r.exit_code == 0, r.output
    order2, scores2 = _brute_force(run_dir, QUESTION, Image.open(run_dir / "q.png"), query_maxlen=64,
                                   attend_to_mask_tokens=False, pad_leak=True)
    assert [h["sample_id"] for h in json.loads(r.stdout)] == order2[:3]
    assert not np.allclose(scores2[:3], scores[:3], atol=1e-4)
    r = CliRunner().invoke(app, ["index", "query", "--out", "run", "--text", QUESTION, "--query-maxlen", "999"])
    assert r.exit_code == 2 and "must be 4" in r.output


def test_eval_against_relevance_labels(run_dir, monkeypatch):
    monkeypatch.chdir(run_dir)
    order, _ = _brute_force(run_dir, QUESTION, Image.open(run_dir / "q.png"))
    (run_dir / "q.jsonl").write_text("\n".join(json.dumps(q) for q in (
        {"id": "top", "text": QUESTION, "image": "q.png", "relevant": [order[0]]},
        {"id": "third", "text": QUESTION, "image": "q.png", "relevant": [order[2]]})) + "\n")
    r = CliRunner().invoke(app, ["index", "eval", "--out", "run", "--queries", "q.jsonl", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["queries"] == 2 and m["R@1"] == pytest.approx(0.5) and m["R@5"] == pytest.approx(1.0)
    assert m["MRR@5"] == pytest.approx((1 + 1 / 3) / 2) and m["P@5"] == pytest.approx(0.2)
