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


def test_an_epoch_visits_every_sample_once_in_its_own_seeded_order():
    e0, e1 = T.epoch_batches(11, 4, seed=3, epoch=0), T.epoch_batches(11, 4, seed=3, epoch=1)
    assert [len(b) for b in e0] == [4, 4, 3]
    assert sorted(sum(e0, [])) == sorted(sum(e1, [])) == list(range(11)) and e0 != e1
    assert e0 == T.epoch_batches(11, 4, seed=3, epoch=0) != T.epoch_batches(11, 4, seed=4, epoch=0)
    # a resumed run draws step k's batch without replaying steps 0 … k-1
    assert list(T._batches(11, 4, 3, 4, 6)) == e1[1:]


def _tiny_run(colour_sets, n: int = 12):
    from kbridge.engine.peers.classify import model as M
    from kbridge.engine.peers.classify.data import read_dataset

    (train_dir, train_missing), _ = colour_sets
    d = M.ensure_tiny("dcp", "food101")
    m, tok = T.with_classes(M.load(d), ("red", "green", "blue")), M.load_tokenizer(d)
    return m, read_dataset(train_dir, "food101", train_missing, m.cfg.class_names).examples[:n], tok


class Killed(Exception):
    pass


def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(colour_sets, tmp_path):
    """12 rows, batch 4, 2 epochs = 6 steps, state saved every 2 steps and at each epoch's end
    (2, 3, 4, 6). Killed after step 5 (its last save: step 4, in the middle of epoch 2), then
    started again: the final trainable weights, the losses of steps 5-6 and the best-validation
    choice equal an uninterrupted run's to 1e-6 (the same float operations in the same order on
    CPU: in practice bit-equal)."""
    kw = dict(epochs=2, lr=3e-3, batch_size=4, warmup=0.2, log_every=1, checkpoint_every=2)
    m, ex, tok = _tiny_run(colour_sets)
    val = ex[:3]
    ref_losses = []
    ref = T.train(m, ex, tok, on_log=lambda s, v: ref_losses.append(v), val_examples=val, **kw)
    ref_w = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    assert ref["steps"] == 6 and ref["epochs"] == 2 and ref["resumed_from"] is None

    import torch

    state = tmp_path / "train-state.pt"

    def kill_at_5(step, loss):   # after step 5, whose work is lost: the last save is step 4's
        if step == 5:
            raise Killed
    m, ex, tok = _tiny_run(colour_sets)
    with pytest.raises(Killed):
        T.train(m, ex, tok, on_log=kill_at_5, val_examples=val, state_path=state, **kw)
    assert torch.load(state, weights_only=True)["step"] == 4

    m, ex, tok = _tiny_run(colour_sets)   # a fresh process: the tiny twin as loaded, a fresh head
    losses = []
    res = T.train(m, ex, tok, on_log=lambda s, v: losses.append(v), val_examples=val, state_path=state, **kw)
    assert res["resumed_from"] == 4 and losses == pytest.approx(ref_losses[4:], abs=1e-6) and len(losses) == 2
    assert (res["best_step"], res["best_metric"]) == (ref["best_step"], pytest.approx(ref["best_metric"], abs=1e-6))
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p, ref_w[n], atol=1e-6), n


def test_a_state_from_other_settings_is_one_line(colour_sets, tmp_path):
    from kbridge.engine.peers.classify.config import ClassifyError

    state = tmp_path / "train-state.pt"
    m, ex, tok = _tiny_run(colour_sets, 8)
    T.train(m, ex, tok, epochs=1, batch_size=4, state_path=state)
    m, ex, tok = _tiny_run(colour_sets, 8)
    with pytest.raises(ClassifyError, match=r"other settings \(batch_size, total_steps\).*delete it"):
        T.train(m, ex, tok, epochs=1, batch_size=2, state_path=state)
    state.write_text("not a state")
    with pytest.raises(ClassifyError, match="cannot read the training state"):
        T.train(m, ex, tok, epochs=1, batch_size=4, state_path=state)
