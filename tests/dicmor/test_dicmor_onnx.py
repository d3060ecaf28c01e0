"""The missing pattern is a tensor input, so the whole recovery + fusion graph exports to ONNX."""
import dataclasses

import numpy as np
import pytest
import torch

from kbridge.engine.recover.model import TINY, OnnxCore
from kbridge.engine.recover.tiny import build

TOL = 1e-4
"""Max |onnxruntime − torch| on the prediction (fp32; measured ~1e-6)."""
CFG = dataclasses.replace(TINY, n_flow=2, n_resblocks=1)
"""The twin with fewer couplings and refiner blocks: the same graph structure, a shorter export."""


def test_onnx_parity_with_mixed_patterns(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from kbridge.export.onnx import export_onnx
    from kbridge.export.specs import Axis, ExportSpec, TensorSpec

    t = 12
    spec = ExportSpec("dicmor.core", (
        TensorSpec("text", ("batch", t, CFG.dims[0])), TensorSpec("audio", ("batch", t, CFG.dims[1])),
        TensorSpec("vision", ("batch", t, CFG.dims[2])), TensorSpec("missing", ("batch", 3), "int64", high=2),
    ), (TensorSpec("prediction", ("batch",)),), (Axis("batch", 1, 8, 64, 3),))
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
    assert np.abs(got - want).max() <= TOL
