"""The missing pattern is a tensor input, so the whole recovery + fusion graph exports to ONNX."""
import dataclasses

import numpy as np
import pytest
import torch

from kbridge.engine.recover.model import TINY, OnnxCore, onnx_spec
from kbridge.engine.recover.tiny import build

TOL = 1e-4
"""Max |onnxruntime − torch| on the prediction (fp32; measured 2.4e-7)."""
CFG = dataclasses.replace(TINY, n_flow=2, n_resblocks=1)
"""The twin with fewer couplings and refiner blocks: the same graph structure, a shorter export."""


def test_onnx_parity_with_mixed_patterns(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from kbridge.export.onnx import export_onnx

    t = 12
    spec = onnx_spec(CFG, steps=t)
    model = build(CFG, seed=2)
    path = export_onnx(spec, OnnxCore(model), tmp_path / "dicmor.onnx", optimize=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(9)
    feats = [torch.randn(7, t, d, generator=g) for d in CFG.dims]
    missing = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]])
    with torch.no_grad():
        want = model(*feats, missing)[0].numpy()
    got = sess.run(None, {"text": feats[0].numpy(), "audio": feats[1].numpy(), "vision": feats[2].numpy(),
                          "missing": missing.numpy()})[0]
    assert got.shape == (7,)
    diff = float(np.abs(got - want).max())
    print(f"dicmor onnx max abs diff {diff:.2e}")
    assert diff <= TOL, diff
