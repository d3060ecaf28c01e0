"""The MulT-style encoder against the arithmetic written out: positions, packed q/k/v, causal mask."""
import math

import torch

from kbridge.engine.peers.recover.fusion import Encoder, causal_mask, positions


def test_positions_by_hand():
    x = torch.ones(3, 2, 4)
    x[1, 1, 0] = 0.0  # step 1 of sample 1: first channel 0 → padding, position 0, zero embedding
    p = positions(x)
    # E = 4: frequencies 1 and exp(−ln 10000) = 1e-4; step t has position t + 1
    for t in range(3):
        a = float(t + 1)
        want = torch.tensor([math.sin(a), math.sin(a * 1e-4), math.cos(a), math.cos(a * 1e-4)])
        assert torch.allclose(p[t, 0], want, atol=1e-6)
    assert torch.equal(p[1, 1], torch.zeros(4)) and torch.allclose(p[2, 1], p[2, 0])


def test_causal_mask_offsets_unequal_lengths():
    m = causal_mask(2, 4)
    assert torch.isinf(m).tolist() == [[False, False, False, True], [False, False, False, False]]


def test_crossmodal_layer_by_hand():
    torch.manual_seed(0)
    E, H, Tq, Tk, B = 8, 2, 5, 5, 3
    enc = Encoder(E, H, 1).eval()
    xq, xk = torch.randn(Tq, B, E), torch.randn(Tk, B, E)
    with torch.no_grad():
        got = enc(xq, xk)
        lay = enc.layers[0]
        x = math.sqrt(E) * xq + positions(xq)
        kv = lay.layer_norms[0](math.sqrt(E) * xk + positions(xk))
        q = lay.layer_norms[0](x)
        w, b = lay.self_attn.in_proj_weight, lay.self_attn.in_proj_bias  # packed [q; k; v]
        Q, K, V = (t @ w[i * E:(i + 1) * E].T + b[i * E:(i + 1) * E] for i, t in enumerate((q, kv, kv)))
        dh = E // H
        heads = []
        for h in range(H):
            s = slice(h * dh, (h + 1) * dh)
            scores = torch.einsum("qbd,kbd->bqk", Q[..., s], K[..., s]) / math.sqrt(dh)
            scores = scores + torch.triu(torch.full((Tq, Tk), float("-inf")), 1)
            heads.append(torch.einsum("bqk,kbd->qbd", scores.softmax(-1), V[..., s]))
        x = x + lay.self_attn.out_proj(torch.cat(heads, -1))
        x = x + lay.fc2(torch.relu(lay.fc1(lay.layer_norms[1](x))))
        want = enc.layer_norm(x)
    assert (got - want).abs().max() <= 1e-5
