"""MMSA pickle reading, missing patterns and the metrics, by hand."""
import json
import math
import os
import pickle

import numpy as np
import pytest

from tests.engine.peers.recover.dicmor_helpers import write_mmsa
from kbridge.engine.peers.recover import data as D
from kbridge.engine.peers.recover.metrics import regression_metrics, weighted_f1


def test_metrics_by_hand():
    pred = np.array([1.2, -0.4, 0.7, 2.6, -2.4, 0.3, -0.6, 1.5])
    truth = np.array([1.0, -1.0, 0.0, 3.0, 0.5, -0.2, -0.6, 2.0])
    m = regression_metrics(pred, truth)
    # non-zero truth: 7 samples (index 2 dropped); sign right at 0, 1, 3, 6, 7 → 5/7
    assert m["acc2"] == pytest.approx(5 / 7)
    # binary truth [T, F, T, T, F, F, T], pred [T, F, T, F, T, F, T]
    # class T (support 4): tp 3, fp 1, fn 1 → F1 6/8; class F (3): tp 2, fp 1, fn 1 → 4/6
    assert m["f1"] == pytest.approx((4 * 6 / 8 + 3 * 4 / 6) / 7)
    # rounded: pred [1, -0, 1, 3, -2, 0, -1, 2] vs truth [1, -1, 0, 3, 0, -0, -1, 2] → 0, 3, 5, 6, 7 equal
    assert m["acc7"] == pytest.approx(5 / 8)
    assert m["mae"] == pytest.approx(np.mean([0.2, 0.6, 0.7, 0.4, 2.9, 0.5, 0.0, 0.5]))
    assert m["corr"] == pytest.approx(np.corrcoef(pred, truth)[0, 1])


def test_metric_edge_cases():
    m = regression_metrics(np.array([1.0, 1.0]), np.array([0.0, 0.0]))
    assert math.isnan(m["acc2"]) and math.isnan(m["f1"]) and math.isnan(m["corr"]) and m["mae"] == 1.0
    assert weighted_f1(np.array([True, True]), np.array([False, False])) == 0.0
    assert regression_metrics(np.array([3.6, -4.0]), np.array([3.0, -3.0]))["acc7"] == 1.0  # clipped to ±3


def test_reads_mmsa_layout(tmp_path):
    s = D.load_split(write_mmsa(tmp_path / "a.pkl", n=6), "test")
    assert s.ids[0] == "vid0$_$0" and s.labels.shape == (6,)
    assert s.text_bert.shape == (6, 3, 12) and s.text_bert.dtype == np.int64 and s.text is None
    assert s.audio[0, 0, 0] == 0.0 and np.isfinite(s.audio).all()
    assert D.load_split(tmp_path / "a.pkl", "valid").audio.shape == (3, 12, 5)


class Evil:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def test_restricted_unpickler_refuses_code(tmp_path):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"test": {"audio": Evil()}}))
    with pytest.raises(D.RecoverDataError, match=r"evil\.pkl: not an MMSA pickle: refusing to load posix\.system"):
        D.load_split(tmp_path / "evil.pkl")
    with pytest.raises(D.RecoverDataError, match="no split 'dev'"):
        D.load_split(write_mmsa(tmp_path / "a.pkl"), "dev")


def test_patterns():
    assert D.parse_pattern("audio+vision") == {"audio", "vision"} and D.parse_pattern("none") == set()
    assert D.pattern_name(frozenset({"vision", "text"})) == "text+vision"
    with pytest.raises(D.RecoverDataError, match="unknown modality 'video'"):
        D.parse_pattern("text+video")
    with pytest.raises(D.RecoverDataError, match="at least one modality"):
        D.parse_pattern("text+audio+vision")
    assert D.mask([frozenset(), frozenset({"audio"})]).tolist() == [[False, False, False], [False, True, False]]


def test_pattern_file(tmp_path):
    ids = ["a", "b", "c"]
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"a": ["text"], "c": ["audio", "vision"]}))
    assert D.read_pattern_file(f, ids) == [{"text"}, set(), {"audio", "vision"}]
    f.write_text(json.dumps({"zz": ["text"]}))
    with pytest.raises(D.RecoverDataError, match="sample 'zz' is not in the data"):
        D.read_pattern_file(f, ids)
    f.write_text(json.dumps({"b": ["text", "audio", "vision"]}))
    with pytest.raises(D.RecoverDataError, match="sample 'b': .*at least one"):
        D.read_pattern_file(f, ids)


def test_mmsa_has0_and_acc5_by_hand():
    """MMSA's metricsTop: Has0 = (pred >= 0) vs (truth >= 0) over all samples, weighted F1 of the
    same; Mult_acc_5 = round(clip(., -2, 2)) equality."""
    pred = np.array([1.2, -0.4, 0.7, 2.6, -2.4, 0.3, -0.6, 1.5])
    truth = np.array([1.0, -1.0, 0.0, 3.0, 0.5, -0.2, -0.6, 2.0])
    m = regression_metrics(pred, truth)
    # truth >= 0: [T, F, T, T, T, F, F, T]; pred >= 0: [T, F, T, T, F, T, F, T] → 6/8 agree
    assert m["acc2_has0"] == pytest.approx(6 / 8)
    # class T (support 5): tp 4, fp 1, fn 1 → 8/10; class F (3): tp 2, fp 1, fn 1 → 4/6
    assert m["f1_has0"] == pytest.approx((5 * 8 / 10 + 3 * 4 / 6) / 8)
    # clipped to ±2 and rounded: pred [1, -0, 1, 2, -2, 0, -1, 2] vs truth [1, -1, 0, 2, 0, -0, -1, 2] → 5/8
    assert m["acc5"] == pytest.approx(5 / 8)


@pytest.mark.parametrize("rate,two,one", [(0.1, 10, 10), (0.3, 30, 30), (0.4, 50, 20), (0.7, 100, 0)])
def test_missing_rate_protocol_fractions(rate, two, one):
    """100 batches of 4: the schedule's batch counts, one pattern per batch, and the mean missing
    fraction per modality equal to the rate (capped at 2/3 for 0.7)."""
    per = D.rate_patterns(400, 4, rate, seed=1111)
    order = np.random.default_rng(1111).permutation(400)
    batches = [frozenset(per[int(i)] for i in order[b:b + 4]) for b in range(0, 400, 4)]
    assert all(len(b) == 1 for b in batches)                       # one pattern per batch
    sizes = [len(next(iter(b))) for b in batches]
    assert sizes == [2] * two + [1] * one + [0] * (100 - two - one)
    frac = np.mean([len(p) for p in per]) / 3
    assert frac == pytest.approx(min(rate, 2 / 3))
    assert per == D.rate_patterns(400, 4, rate, seed=1111) and per != D.rate_patterns(400, 4, rate, seed=1112)
    with pytest.raises(D.RecoverDataError, match="rates 0.1, 0.2"):
        D.rate_patterns(400, 4, 0.75, seed=1)
