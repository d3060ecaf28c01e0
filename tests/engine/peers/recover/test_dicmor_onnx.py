"""The missing pattern is a tensor input, so the whole recovery + fusion graph exports to ONNX."""
import dataclasses

import numpy as np
import pytest
import torch

from kbridge.engine.peers.recover.model import TINY
from kbridge.engine.peers.recover.tiny import build

TOL = 1e-4
"""Max |onnxruntime − torch| on the prediction (fp32; measured 2.4e-7)."""
CFG = dataclasses.replace(TINY, n_flow=2, n_resblocks=1)
"""The twin with fewer couplings and refiner blocks: the same graph structure, a shorter export."""


def test_onnx_parity_with_mixed_patterns_and_recover_backend_onnx(tmp_path):
    """``recover --backend onnx`` exports the full graph once into the cache and gives torch's
    metrics on every pattern (the torch path computes only each pattern's recoveries); the same
    graph, fed a batch of mixed patterns, matches torch's full graph within TOL."""
    ort = pytest.importorskip("onnxruntime")
    from tests.engine.peers.recover.dicmor_helpers import write_mmsa
    from kbridge.engine.peers.recover.convert import save_dir
    from kbridge.engine.peers.recover.evaluate import evaluate

    model = build(CFG, seed=4)
    d = save_dir(tmp_path / "m", model, None, source="test")
    pkl = write_mmsa(tmp_path / "a.pkl", n=9, t=12, dims=CFG.dims, text_features=True)
    want = evaluate(model, "features", d, pkl)
    got = evaluate(model, "features", d, pkl, backend="onnx", cache_dir=tmp_path / "cache")
    (path,) = (tmp_path / "cache" / "dicmor-onnx").glob("*/dicmor.onnx")
    for a, b in zip(want.rows, got.rows):
        assert a.pattern == b.pattern
        assert b.metrics["mae"] == pytest.approx(a.metrics["mae"], abs=1e-4)
        assert b.metrics["acc7"] == a.metrics["acc7"]

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(9)
    feats = [torch.randn(7, 12, d, generator=g) for d in CFG.dims]
    missing = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]])
    with torch.no_grad():
        want = model(*feats, missing)[0].numpy()
    got = sess.run(None, {"text": feats[0].numpy(), "audio": feats[1].numpy(), "vision": feats[2].numpy(),
                          "missing": missing.numpy()})[0]
    assert got.shape == (7,)
    diff = float(np.abs(got - want).max())
    print(f"dicmor onnx max abs diff {diff:.2e}")
    assert diff <= TOL, diff
