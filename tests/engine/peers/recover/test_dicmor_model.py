"""The DiCMoR network: per-sample missing patterns, label independence, NLL, full-size counts."""
import math

import numpy as np

import pytest
import torch

from tests.engine.peers.recover.dicmor_helpers import read_tsv
from kbridge.engine.peers.recover.convert import DEAD, reference_layout
from kbridge.engine.peers.recover.model import MOSEI, MOSI, SHORT, TINY, DiCMoR
from kbridge.engine.peers.recover.tiny import build

T = 12


def _inputs(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, T, dim, generator=g) for dim in TINY.dims]


PATTERNS = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)


@pytest.fixture(scope="module")
def model():
    return build(TINY, seed=1)


@torch.no_grad()
def test_predictions_do_not_depend_on_labels(model):
    x = _inputs(7)
    p1, bpd1 = model(*x, PATTERNS, labels=torch.tensor([3.0, 2.2, 1.0, 0.1, -1.0, -2.0, -2.8]))
    p2, bpd2 = model(*x, PATTERNS, labels=torch.tensor([-3.0, 0.0, 0.0, 2.9, 1.4, 0.0, 3.0]))
    p3, none = model(*x, PATTERNS)
    assert torch.equal(p1, p2) and torch.equal(p1, p3) and none is None
    assert (bpd1 - bpd2).abs().max() > 1e-4  # labels do reach the class-prior NLL


@torch.no_grad()
def test_each_sample_gets_its_own_pattern(model):
    """A mixed batch equals every sample run alone with its own pattern (the reference draws one
    pattern per batch)."""
    x = _inputs(7)
    mixed, _ = model(*x, PATTERNS)
    alone = torch.cat([model(*(t[i:i + 1] for t in x), PATTERNS[i:i + 1])[0] for i in range(7)])
    assert (mixed - alone).abs().max() <= 1e-5
    assert len(set(mixed.tolist())) == 7


@torch.no_grad()
def test_missing_inputs_are_never_read(model):
    x = _inputs(7)
    base, _ = model(*x, PATTERNS)
    for col in range(3):
        y = [t.clone() for t in x]
        y[col] = torch.randn_like(y[col]) * 5
        changed, _ = model(*y, PATTERNS)
        miss = PATTERNS[:, col]
        assert (changed[miss] - base[miss]).abs().max() <= 1e-6
        assert (changed[~miss] - base[~miss]).abs().min() > 1e-6


@torch.no_grad()
def test_completion_keeps_available_and_recovers_missing(model):
    x = _inputs(7)
    feats, z, _ = model.complete(*x, PATTERNS)
    for i, m in enumerate(SHORT):
        conv = getattr(model, f"proj_{m}")(x[i].transpose(1, 2))
        miss = PATTERNS[:, i]
        assert torch.equal(feats[m][~miss], conv[~miss])
        assert feats[m].shape == (7, TINY.d, T - TINY.kernel + 1)
    # text missing, only audio available (row 5: text + vision missing): rec_l(flow_l⁻¹(z_a))
    expect = model.rec_l(model.flow_l.reverse(z["a"][5:6]))
    assert (feats["l"][5:6] - expect).abs().max() <= 1e-6
    # text missing, audio and vision available (row 1): cat order (vision, audio) as the reference
    both = torch.cat([model.flow_l.reverse(z["v"][1:2]), model.flow_l.reverse(z["a"][1:2])], 1)
    assert (feats["l"][1:2] - model.rec_l(model.cat_l(both))).abs().max() <= 1e-6


@torch.no_grad()
def test_bits_per_dim_by_hand(model):
    x = _inputs(2)
    labels = torch.tensor([2.4, -0.6])  # classes p (+2) and wn (−1)
    _, bpd = model(*x, PATTERNS[:2], labels=labels)
    _, z, logdet = model.complete(*x, PATTERNS[:2])
    for b, prior in ((0, model.prior_p), (1, model.prior_wn)):
        stats = prior.conv.bias * torch.exp(3 * prior.scale.flatten())  # prior of zeros: bias · exp(3 s)
        mean, log_sd = stats.chunk(2)
        for j, m in enumerate(SHORT):
            normal = torch.distributions.Normal(mean[:, None], torch.exp(log_sd)[:, None])
            lp = normal.log_prob(z[m][b]).sum() + logdet[m][b]
            assert abs(bpd[b, j].item() - (-lp / (math.log(2) * z[m][b].numel())).item()) <= 1e-4


@pytest.mark.parametrize("cfg, name, params", [(MOSI, "mosi", 3_524_817), (MOSEI, "mosei", 13_760_673)])
def test_full_size_matches_reference_parameter_count(cfg, name, params):
    """Full MOSI / MOSEI architectures on meta: our parameters plus the dead reference ones give the
    reference's count (REFERENCE.md §4.2), and every live key has the reference's shape."""
    with torch.device("meta"):
        ours = DiCMoR(cfg)
    live = sum(p.numel() for p in ours.parameters())
    ref = reference_layout(cfg)
    dead_params = sum(math.prod(s) for k, (s, dt) in ref.items()
                      if DEAD.search(k) and dt.is_floating_point and not k.endswith(("version", "_float_tensor")))
    assert live + dead_params == params
    tsv = read_tsv(name)
    assert {k: s for k, (s, _) in tsv.items()} == {k: s for k, (s, _) in ref.items()}


def test_one_pattern_path_equals_the_full_graph():
    """predict_pattern computes only the recoveries a pattern needs; its prediction equals the
    full graph's (every candidate computed, then selected) for every pattern, and predict()'s
    grouping by pattern gives a mixed batch the same predictions."""
    from kbridge.engine.peers.recover import data as D
    from kbridge.engine.peers.recover.evaluate import predict
    from kbridge.engine.peers.recover.tiny import build

    import dataclasses

    cfg = dataclasses.replace(TINY, n_flow=2, n_resblocks=1)   # the same graph structure, less work
    m = build(cfg, seed=3)
    g = torch.Generator().manual_seed(5)
    x = [torch.randn(6, 12, d, generator=g) for d in cfg.dims]
    for p in D.ALL_PATTERNS:
        miss = torch.tensor(D.mask([p] * 6))
        with torch.no_grad():
            full, _ = m(*x, miss)
        fast = m.predict_pattern(*x, tuple(bool(v) for v in miss[0]))
        torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    mixed = np.array(D.mask([D.ALL_PATTERNS[i % 7] for i in range(6)]))
    with torch.no_grad():
        full, _ = m(*x, torch.tensor(mixed))
    got = predict(m, *(t.numpy() for t in x), mixed, batch_size=2)
    np.testing.assert_allclose(got, full.numpy(), rtol=1e-5, atol=1e-5)
