"""`kbridge recover` and `kbridge models convert-dicmor` end to end (in process), and the
evaluation pipeline against hand-computed metrics."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.engine.peers.recover.dicmor_helpers import reference_state, write_mmsa
from kbridge.cli.app import app
from kbridge.engine.peers.recover.convert import save_dir
from kbridge.engine.peers.recover.evaluate import evaluate
from kbridge.engine.peers.recover.model import TINY
from kbridge.engine.peers.recover.tiny import build

run = CliRunner().invoke


@pytest.fixture(scope="module")
def pkl(tmp_path_factory):
    return write_mmsa(tmp_path_factory.mktemp("mmsa") / "aligned_50.pkl", n=10)


def test_recover_tiny_every_pattern(pkl):
    r = run(app, ["recover", "--model", "tiny", "--data", str(pkl), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [p["pattern"] for p in rep["patterns"]] == ["none", "text", "audio", "vision", "text+audio",
                                                      "text+vision", "audio+vision"]
    assert all(p["n"] == 10 and 0 <= p["acc7"] <= 1 and p["mae"] > 0 for p in rep["patterns"])
    assert len({p["mae"] for p in rep["patterns"]}) == 7  # each pattern changes the predictions


def test_recover_table_and_pattern_file(pkl, tmp_path):
    r = run(app, ["recover", "--data", str(pkl), "--missing", "text", "--missing", "audio+vision"])
    assert r.exit_code == 0, r.output
    assert "audio+vision" in r.stdout and "Acc-7" in r.stdout
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"vid0$_$0": ["text"], "vid1$_$0": ["text"], "vid2$_$0": ["audio", "vision"]}))
    rep = json.loads(run(app, ["recover", "--data", str(pkl), "--missing", str(f), "--json"]).stdout)
    assert [(p["pattern"], p["n"]) for p in rep["patterns"]] == [("none", 7), ("text", 2), ("audio+vision", 1),
                                                                ("all", 10)]


def test_bad_input_is_one_error_line(pkl, tmp_path):
    r = run(app, ["recover", "--data", str(pkl), "--missing", "smell"])
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "unknown modality 'smell'" in lines[0]
    r = run(app, ["recover", "--data", str(tmp_path / "none.pkl")])
    assert r.exit_code == 2 and "none.pkl: no such file" in r.stderr


def test_convert_then_recover(pkl, tmp_path):
    torch.save(reference_state(TINY, seed=8), tmp_path / "dicmor.pth")
    r = run(app, ["models", "convert-dicmor", "--ckpt", str(tmp_path / "dicmor.pth"), "--out", str(tmp_path / "m"),
                  "--bert", "tiny", "--heads", "2"])
    assert r.exit_code == 0, r.output
    r = run(app, ["recover", "--model", str(tmp_path / "m"), "--data", str(pkl), "--missing", "vision", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["patterns"][0]["pattern"] == "vision"


def test_metrics_through_the_pipeline_by_hand(tmp_path):
    """A model whose output is the constant 0.5 (out_layer zeroed): every metric is hand-computable."""
    labels = [1.0, -1.0, 0.0, 2.6, -0.4, 0.4, 3.0, -2.0]
    pkl = write_mmsa(tmp_path / "c.pkl", n=8, labels=labels, text_features=True)
    model = build(TINY)
    with torch.no_grad():
        model.out_layer.weight.zero_()
        model.out_layer.bias.fill_(0.5)
    save_dir(tmp_path / "const", model, None, "test")
    rep = evaluate(model, "features", tmp_path / "const", pkl, ["audio+vision"]).to_dict()["patterns"][0]
    # non-zero truth: 7, of which positive 1.0, 2.6, 0.4, 3.0 → Acc-2 4/7
    assert rep["acc2"] == pytest.approx(4 / 7, abs=1e-6)
    # all predicted positive: class T F1 = 2·4/(2·4+3) = 8/11 (support 4), class F F1 0 (support 3)
    assert rep["f1"] == pytest.approx(4 * (8 / 11) / 7, abs=1e-6)
    # round(0.5) = 0 (half to even) equals round(truth) for 0.0, -0.4, 0.4 → 3/8
    assert rep["acc7"] == pytest.approx(3 / 8, abs=1e-6)
    assert rep["mae"] == pytest.approx(np.mean(np.abs(np.array(labels) - 0.5)), abs=1e-6)
    assert rep["corr"] is None  # constant predictions: undefined, reported as null


def test_wrong_feature_width_names_the_file(tmp_path):
    pkl = write_mmsa(tmp_path / "w.pkl", dims=(32, 7, 20))
    r = run(app, ["recover", "--data", str(pkl)])
    assert r.exit_code == 2 and "w.pkl: audio features have shape (10, 12, 7)" in r.stderr


def test_bert_base_ids_run_on_the_twin_and_a_smaller_vocabulary_is_one_line(tmp_path):
    """MMSA's text_bert holds bert-base ids (up to 30,521): the twin's BERT covers them (the README's
    first example); a converted model whose BERT has fewer rows names the sample instead of an
    IndexError traceback."""
    from kbridge.engine.peers.recover.text import tiny_bert

    real = write_mmsa(tmp_path / "aligned_50.pkl", n=6, vocab=30522, seed=4)
    r = run(app, ["recover", "--data", str(real), "--missing", "text", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["patterns"][0]["n"] == 6
    small = tmp_path / "small"
    tiny_bert(small / "bert", hidden=TINY.dims[0], vocab_size=0)   # rows for the tokenizer's 346 words only
    save_dir(small, build(TINY), small / "bert", source="test")
    r = run(app, ["recover", "--model", str(small), "--data", str(real)])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "sample vid0$_$0: text_bert token id" in lines[0] and "outside the model's BERT vocabulary of 346" in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_device_errors_and_a_failed_conversion_leaves_nothing(pkl, tmp_path):
    for dev, msg in (("cuda", "no CUDA GPU is available"), ("tpu", "unknown device 'tpu'")):
        r = run(app, ["recover", "--data", str(pkl), "--device", dev])
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and msg in lines[0], r.output
    torch.save(reference_state(TINY, seed=8), tmp_path / "dicmor.pth")
    r = run(app, ["models", "convert-dicmor", "--ckpt", str(tmp_path / "dicmor.pth"), "--out", str(tmp_path / "m"),
                  "--bert", str(tmp_path / "no-bert"), "--heads", "2"])
    assert r.exit_code == 2 and "no-bert: not a BERT directory" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicmor.pth"]


def test_missing_rate_rows_per_seed_and_their_mean(tmp_path):
    """In process on the short twin (the command itself runs as docs/recover.md's example)."""
    import dataclasses

    from kbridge.engine.peers.recover.data import RecoverDataError

    cfg = dataclasses.replace(TINY, n_flow=2, n_resblocks=1)
    model = build(cfg, seed=4)
    d = save_dir(tmp_path / "m", model, None, source="test")
    pkl = write_mmsa(tmp_path / "a.pkl", n=10, t=12, dims=cfg.dims, text_features=True)
    rows = evaluate(model, "features", d, pkl, missing_rate=0.3, seeds=(1111, 1112), rate_batch=2).to_dict()["patterns"]
    assert [p["pattern"] for p in rows] == ["MR 0.3 seed 1111", "MR 0.3 seed 1112", "MR 0.3 mean of 2"]
    assert rows[0]["n"] == rows[1]["n"] == rows[2]["n"] == 10
    for k in ("acc2", "acc2_has0", "f1_has0", "acc5", "acc7", "mae"):
        assert rows[2][k] == pytest.approx((rows[0][k] + rows[1][k]) / 2, abs=1e-6)
    with pytest.raises(RecoverDataError, match="exclusive"):
        evaluate(model, "features", d, pkl, missing=["text"], missing_rate=0.3)


def test_train_dicmor_writes_the_best_epoch_as_a_model_that_recover_loads(pkl, tmp_path):
    """`kbridge models train-dicmor` on the tiny twin (4 training rows, 3 validation rows, 3 epochs):
    the model directory it writes holds the best validation epoch's weights (they differ from the
    twin's), loads in `kbridge recover`, copies the BERT the tokens need, and leaves no training state."""
    from kbridge.engine.config import build_config
    from kbridge.engine.peers.recover.convert import load_dir
    from kbridge.engine.peers.recover.tiny import load

    out = tmp_path / "trained"
    r = run(app, ["models", "train-dicmor", "--data", str(pkl), "--out", str(out), "--epochs", "3",
                  "--batch-size", "2", "--lr", "1e-3", "--missing-rate", "0.3", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["epochs"] == 3 and len(rep["valid_l1"]) == 3 and rep["best_valid"] == min(rep["valid_l1"])
    assert rep["best_epoch"] == 1 + rep["valid_l1"].index(rep["best_valid"])
    assert not (out / "train-state.pt").exists()
    trained, text = load_dir(out)
    twin, twin_text, _ = load("tiny", build_config("tiny").cache_dir())
    assert text == twin_text
    if text == "bert":
        assert (out / "bert").is_dir()
    diff = [k for k, v in trained.state_dict().items() if not torch.equal(v, twin.state_dict()[k])]
    assert diff and not any(k.startswith(("proj_l", "proj_a", "proj_v")) for k in diff)  # input projections frozen
    r = run(app, ["recover", "--model", str(out), "--data", str(pkl), "--missing", "text", "--json"])
    assert r.exit_code == 0, r.output


def test_train_dicmor_bad_data_is_one_line(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    r = run(app, ["models", "train-dicmor", "--data", str(bad), "--out", str(tmp_path / "o"), "--epochs", "1"])
    assert r.exit_code != 0 and "Traceback" not in r.output and str(bad) in r.output
