"""MIRe's two encoders as ONNX graphs, run by onnxruntime beside (or instead of) torch:

- ``query.onnx``: ids, mask [batch, query_maxlen] and pixels [batch, 3, S, S] → q [batch, 28 +
  query_maxlen, dim] (unit rows, zero rows at masked text positions): ``MireModel.query``;
- ``doc.onnx``: ids, attention_mask, keep [batch, seq] (seq dynamic, up to doc_maxlen) → d
  [batch, seq, dim]: ``MireModel.doc``.

The config's inference switches (``pad_leak``; ``attend_to_mask_tokens`` and ``query_maxlen``
through the mask and the ids the tokenisation gives) are those of the model directory at export
time. Token ids in, token bags out: the tokenisation and the valid-token selection stay in
``MireEncoder``, the same for both backends.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kbridge.engine.retrieve.mire.model import MireModel
from kbridge.export.specs import Axis, ExportSpec, TensorSpec



def _image_size(model: MireModel) -> int:
    return int(model.vision_tower.vision_tower.config.image_size)


def query_spec(model: MireModel, max_batch: int = 64) -> ExportSpec:
    cfg, s = model.cfg, _image_size(model)
    n = cfg.query_maxlen
    vocab = model.model.bert.config.vocab_size
    return ExportSpec("mire.query", (
        TensorSpec("ids", ("batch", n), "int64", high=vocab),
        TensorSpec("mask", ("batch", n), "int64", high=2),
        TensorSpec("pixels", ("batch", 3, s, s)),                 # CLIP-normalised images
    ), (TensorSpec("q", ("batch", cfg.num_tokens + cfg.num_heads + n, cfg.dim)),),
        (Axis("batch", 1, 16, max_batch, 3),))


def doc_spec(model: MireModel, max_batch: int = 64) -> ExportSpec:
    cfg = model.cfg
    vocab = model.model.bert.config.vocab_size
    seq = ("batch", "seq")
    return ExportSpec("mire.doc", (
        TensorSpec("ids", seq, "int64", high=vocab),
        TensorSpec("attention_mask", seq, "int64", high=2),
        TensorSpec("keep", seq, "int64", high=2),
    ), (TensorSpec("d", ("batch", "seq", cfg.dim)),),
        (Axis("batch", 1, 16, max_batch, 3), Axis("seq", 4, 64, cfg.doc_maxlen, 7)))


class QueryIO(torch.nn.Module):
    def __init__(self, model: MireModel):
        super().__init__()
        self.model = model

    def forward(self, ids, mask, pixels):
        return (self.model.query(ids, mask, pixels)[0],)


class DocIO(torch.nn.Module):
    def __init__(self, model: MireModel):
        super().__init__()
        self.model = model

    def forward(self, ids, attention_mask, keep):
        return (self.model.doc(ids, attention_mask, keep),)


def export(model: MireModel, out_dir: Path, max_batch: int = 64) -> dict[str, Path]:
    """Write ``out_dir/query.onnx`` and ``out_dir/doc.onnx`` (weights beside each in ``.data``)."""
    from kbridge.export.onnx import export_onnx

    model = model.cpu().eval()
    out_dir = Path(out_dir)
    # optimize=False: the exporter's optimiser adds most of the export time and changes no number
    return {"query": export_onnx(query_spec(model, max_batch), QueryIO(model), out_dir / "query.onnx", optimize=False),
            "doc": export_onnx(doc_spec(model, max_batch), DocIO(model), out_dir / "doc.onnx", optimize=False)}


def runners(model: MireModel, out_dir: Path, device: str = "cpu") -> dict:
    """onnxruntime sessions of an ``export`` directory: name → runner(inputs dict) → outputs dict."""
    from kbridge.engine.runtime.ort import OrtRunner

    provider = "cuda" if device.startswith("cuda") else "cpu"
    return {"query": OrtRunner(Path(out_dir) / "query.onnx", query_spec(model), provider=provider, device=device),
            "doc": OrtRunner(Path(out_dir) / "doc.onnx", doc_spec(model), provider=provider, device=device)}


def parity(model: MireModel, run: dict, inputs: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, float]:
    """Largest |torch − onnxruntime| per graph (``run``: ``runners``' sessions) on ``inputs`` (graph
    name → input dict; default: the specs' sample inputs at batch 3)."""
    model = model.cpu().eval()
    io = {"query": QueryIO(model), "doc": DocIO(model)}
    specs = {"query": query_spec(model), "doc": doc_spec(model)}
    out = {}
    for name in ("query", "doc"):
        x = (inputs or {}).get(name) or specs[name].sample()
        with torch.no_grad():
            want = io[name](*(x[k] for k in specs[name].input_names()))[0]
        got = run[name](x)[specs[name].output_names()[0]]
        out[name] = float((got.float() - want.float()).abs().max())
    return out
