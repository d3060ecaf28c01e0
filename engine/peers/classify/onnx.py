"""The whole classifier as one ONNX graph: inputs pixel_values, input_ids and the missing-type flag
(all with a dynamic batch), output logits."""
from __future__ import annotations

import hashlib
from pathlib import Path

from kbridge.engine.peers.classify.config import ClassifierConfig
from kbridge.export.specs import Axis, ExportSpec, TensorSpec


def classifier_spec(cfg: ClassifierConfig, max_batch: int = 256) -> ExportSpec:
    s = cfg.image_size
    return ExportSpec(f"classify.{cfg.kind}_{cfg.task}", (
        TensorSpec("pixel_values", ("batch", 3, s, s)),                         # CLIP-normalised images
        TensorSpec("input_ids", ("batch", cfg.context_length), "int64", high=cfg.vocab_size),
        TensorSpec("missing_type", ("batch",), "int64", high=3),                # 0 / 1 / 2 per row
    ), (TensorSpec("logits", ("batch", cfg.num_classes)),), (Axis("batch", 1, 16, max_batch, 3),))


def export(model, path: Path, max_batch: int = 256) -> Path:
    from kbridge.export.onnx import export_onnx

    return export_onnx(classifier_spec(model.cfg, max_batch), model.cpu().eval(), Path(path))


def cached_onnx(model, model_dir: Path, cache_dir: Path) -> Path:
    """Export once per (weights file, config) into the cache; later runs reuse the graph."""
    w = Path(model_dir) / "model.safetensors"
    st = w.stat()
    key = hashlib.sha256(f"{w.resolve()}:{st.st_size}:{st.st_mtime_ns}:{model.cfg.to_json()}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / "classify-onnx" / key / "classifier.onnx"
    if not path.exists():
        export(model, path)
    return path


def runner(path: Path, cfg: ClassifierConfig, device: str = "cpu"):
    from kbridge.engine.runtime.ort import OrtRunner

    return OrtRunner(path, classifier_spec(cfg), provider="cuda" if device.startswith("cuda") else "cpu",
                     device=device)
