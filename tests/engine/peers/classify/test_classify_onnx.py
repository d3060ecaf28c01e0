"""The whole classifier (flag as a tensor input) exported to ONNX: same logits under onnxruntime."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")

TOL = 1e-4
"""Absolute logit tolerance, fp32 on CPU (measured ~1e-7; fused kernels reorder sums)."""


@pytest.mark.parametrize("kind", ["dcp"])  # REP passes too (checked by hand); one export keeps the suite short
def test_onnx_parity_at_batch_1_3_5(kind, tmp_path):
    import os

    from kbridge.engine.peers.classify import onnx
    from kbridge.engine.peers.classify.model import ensure_tiny, load

    d = ensure_tiny(kind, "mmimdb")
    m = load(d)
    path = onnx.cached_onnx(m, d, os.environ["KBRIDGE_CACHE"])
    r = onnx.runner(path, m.cfg)
    g = torch.Generator().manual_seed(5)
    for b in (1, 3, 5):
        px = torch.randn(b, 3, 32, 32, generator=g)
        ids = torch.randint(1, 1000, (b, 77), generator=g)
        ids[:, 9] = m.cfg.vocab_size - 1
        flag = torch.arange(b) % 3                      # every missing type in one batch
        with torch.no_grad():
            want = m(px, ids, flag)
        got = r({"pixel_values": px, "input_ids": ids, "missing_type": flag})["logits"]
        assert got.shape == (b, 23)
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    # the flag is an input of the graph, not a constant folded at export time
    with torch.no_grad():
        alt = r({"pixel_values": px, "input_ids": ids, "missing_type": (flag + 1) % 3})["logits"]
    assert (alt - got).abs().max() > 1e-4
