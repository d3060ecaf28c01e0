"""``classify train`` streams its data (one batch encoded per step, never the whole set) and follows
a warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math

import pytest

from kbridge.engine.peers.classify import train as T


def test_schedule_warms_up_then_decays_to_zero():
    f = [T.schedule(k, 20, 0.1) for k in range(20)]
    assert f[:2] == [0.5, 1.0]                               # 2 warm-up steps
    assert f[2] == 1.0 and f[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 17 / 18)))
    assert all(a >= b for a, b in zip(f[1:], f[2:]))         # non-increasing after the warm-up


def test_train_encodes_one_batch_per_step(colour_sets, monkeypatch):
    from kbridge.engine.peers.classify import model as M
    from kbridge.engine.peers.classify.data import read_dataset

    (train_dir, train_missing), _ = colour_sets
    m = M.load(M.ensure_tiny("dcp", "food101"))
    tok = M.load_tokenizer(M.ensure_tiny("dcp", "food101"))
    m = T.with_classes(m, ("red", "green", "blue"))
    ds = read_dataset(train_dir, "food101", train_missing, m.cfg.class_names)
    sizes = []
    real = T.batch_inputs

    def spy(examples, tokenizer, cfg):
        sizes.append(len(examples))
        return real(examples, tokenizer, cfg)

    monkeypatch.setattr(T, "batch_inputs", spy)
    losses = []
    res = T.train(m, ds.examples, tok, steps=5, lr=1e-3, batch_size=4, warmup=0.4,
                  on_log=lambda step, loss: losses.append(loss), log_every=1)
    assert sizes == [4] * 5 and len(ds.examples) == 48        # five batches of 4, never the 48 at once
    assert res["steps"] == 5 and len(losses) == 5 and all(math.isfinite(v) for v in losses)


def test_validation_keeps_the_best_weights(colour_sets, monkeypatch):
    """Validated at steps 2, 4, 6 (and the end): the kept trainable weights are those of the best
    evaluation, and re-validating them gives that metric."""
    from kbridge.engine.peers.classify import model as M
    from kbridge.engine.peers.classify.data import read_dataset

    (train_dir, train_missing), (val_dir, val_missing) = colour_sets
    d = M.ensure_tiny("dcp", "food101")
    m, tok = T.with_classes(M.load(d), ("red", "green", "blue")), M.load_tokenizer(d)
    ds = read_dataset(train_dir, "food101", train_missing, m.cfg.class_names)
    val = read_dataset(val_dir, "food101", val_missing, m.cfg.class_names).examples
    seen = []
    real = T._validate

    def spy(*a, **k):
        seen.append(real(*a, **k))
        return seen[-1]

    monkeypatch.setattr(T, "_validate", spy)
    res = T.train(m, ds.examples, tok, steps=6, lr=3e-3, batch_size=8, val_examples=val, val_every=2)
    assert len(seen) == 3 and res["best_metric"] == max(seen)
    assert res["best_step"] == 2 * (seen.index(max(seen)) + 1)
    assert real(m, val, tok, 8, "cpu") == pytest.approx(res["best_metric"])
