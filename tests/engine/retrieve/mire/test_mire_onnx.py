"""MIRe's encoders exported to ONNX: onnxruntime equals torch on the tiny twin (fp32, 1e-5) for
queries with images (attended and masked [MASK] padding) and documents of several lengths, at
batch 1 and 3; ``kbridge mire export`` writes both graphs and reports the same check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kbridge.cli.app import app
from kbridge.engine.retrieve.mire import onnx as X
from kbridge.engine.retrieve.mire.checkpoint import resolve

TOL = 1e-5
"""fp32 graph against the fp32 module: the same operations, reordered by the exporter / ORT."""


def _images(n):
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_onnx_encoders_equal_torch_and_the_cli_exports_them(cfg, tmp_path):
    r = CliRunner().invoke(app, ["mire", "export", "--model", "tiny", "--out", str(tmp_path / "onnx")])
    assert r.exit_code == 0, r.output
    assert "query.onnx" in r.output and "doc.onnx" in r.output and "max |Δ|" in r.output
    assert (tmp_path / "onnx" / "query.onnx").exists() and (tmp_path / "onnx" / "doc.onnx").exists()

    enc = resolve("tiny", cfg.cache_dir())
    run = X.runners(enc.model, tmp_path / "onnx")
    texts = ["what colour is the car?", "a dog", "two people walking along a beach at sunset"]
    for n in (1, 3):
        ids, mask = enc.query_ids(texts[:n])
        px = enc.pixels(_images(n))
        masked = mask.clone()
        masked[:, 8:] = 0                    # MIRe's inference: [MASK] padding masked out
        dids, att, keep = enc.doc_ids(texts[:n])
        for m in (mask, masked):
            d = X.parity(enc.model, run, {"query": {"ids": ids, "mask": m, "pixels": px},
                                                       "doc": {"ids": dids, "attention_mask": att, "keep": keep}})
            assert d["query"] < TOL and d["doc"] < TOL, (n, d)
    # the graphs are not trivially equal: the query output depends on the image and on the mask
    ids, mask = enc.query_ids(texts[:2])
    a = run["query"]({"ids": ids, "mask": mask, "pixels": enc.pixels(_images(2))})["q"]
    b = run["query"]({"ids": ids, "mask": mask, "pixels": enc.pixels(_images(2)[::-1])})["q"]
    assert (a - b).abs().max() > 1e-3
    with torch.no_grad():
        ref = enc.model.query(ids, mask, enc.pixels(_images(2)))[0]
    assert torch.allclose(a, ref, atol=TOL)


def test_export_of_a_missing_model_is_one_line(tmp_path):
    r = CliRunner().invoke(app, ["mire", "export", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
