"""DiCMoR's training loop (the reference's loss, protocol and schedule) on the short twin: the
flows learn through the NLL alone, a few epochs lower the loss, and a killed run resumes to the
uninterrupted run's weights."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kbridge.engine.peers.recover import train as T
from kbridge.engine.peers.recover.model import TINY
from kbridge.engine.peers.recover.tiny import build

CFG = dataclasses.replace(TINY, n_flow=2, n_resblocks=1)


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    feats = tuple(rng.normal(size=(n, 12, d)).astype(np.float32) for d in CFG.dims)
    labels = np.clip(feats[1][:, :, 0].mean(1) * 6, -3, 3).astype(np.float32)   # learnable from audio
    return feats, labels


def test_flows_get_gradients_from_the_nll_only():
    m = build(CFG, seed=1).train()
    (t, a, v), y = _data(4, 0)
    miss = torch.tensor([[1, 0, 0]] * 4)
    loss, _ = T.batch_loss(m, torch.tensor(t), torch.tensor(a), torch.tensor(v), miss, torch.tensor(y), w=0.0)
    loss.backward()   # L1 alone: the reverse passes are detached, so no flow parameter gets a gradient
    assert all(p.grad is None or not p.grad.any() for p in m.flow_l.parameters())
    assert any(p.grad is not None and p.grad.any() for p in m.rec_l.parameters())
    assert all(p.grad is None for p in m.proj_l.parameters())   # frozen, as in the reference
    m.zero_grad()
    loss, _ = T.batch_loss(m, torch.tensor(t), torch.tensor(a), torch.tensor(v), miss, torch.tensor(y), w=0.1)
    loss.backward()
    assert any(p.grad is not None and p.grad.any() for p in m.flow_l.parameters())


class Killed(Exception):
    pass


def test_epochs_lower_the_loss_and_a_killed_run_resumes_to_the_same_weights(tmp_path):
    """16 training rows, batch 4, accumulation 2, 4 epochs at lr 1e-3 (the reference's 1e-4 moves
    a random twin too slowly for a short test): the training L1 falls; killed after epoch 2 and
    started again, the run ends with the uninterrupted run's weights and history (1e-6)."""
    cfg = T.TrainConfig(epochs=4, batch_size=4, lr=1e-3, update_epochs=2, missing_rate=0.3, seed=7)
    tr, va = _data(16, 1), _data(8, 2)
    ref_model = build(CFG, seed=2)
    ref = T.train(ref_model, *tr, *va, cfg)
    assert ref["epochs"] == 4 and ref["train_l1"][-1] < ref["train_l1"][0]
    assert ref["best_valid"] == min(ref["valid_l1"])

    state = tmp_path / "state.pt"

    def kill_after_2(epoch, hist):
        if epoch == 2:
            raise Killed
    with pytest.raises(Killed):
        T.train(build(CFG, seed=2), *tr, *va, cfg, state_path=state, on_epoch=kill_after_2)
    m = build(CFG, seed=2)
    res = T.train(m, *tr, *va, cfg, state_path=state)
    assert res["resumed_from"] == 2
    assert res["train_l1"] == pytest.approx(ref["train_l1"], abs=1e-6)
    assert res["valid_l1"] == pytest.approx(ref["valid_l1"], abs=1e-6)
    want = ref_model.state_dict()
    for k, v in m.state_dict().items():
        assert torch.allclose(v, want[k], atol=1e-6), k
    with pytest.raises(T.D.RecoverDataError, match="other settings"):
        T.train(build(CFG, seed=2), *tr, *va, dataclasses.replace(cfg, lr=2e-3), state_path=state)
