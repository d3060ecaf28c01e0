"""``kbridge recover``: predict sentiment under missing patterns and score each pattern."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kbridge.engine.peers.recover import data as D
from kbridge.engine.peers.recover.metrics import regression_metrics
from kbridge.engine.peers.recover.model import DiCMoR


@dataclass(frozen=True)
class PatternResult:
    pattern: str
    """Missing modalities (``audio+vision``, ``none``), or ``all`` for a pattern file's whole split."""
    n: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Report:
    model: str
    data: str
    split: str
    rows: list[PatternResult]

    def to_dict(self) -> dict:
        def clean(v: float):
            return None if v != v else round(v, 6)  # NaN → null
        return {"model": self.model, "data": self.data, "split": self.split,
                "patterns": [{"pattern": r.pattern, "n": r.n, **{k: clean(v) for k, v in r.metrics.items()}}
                             for r in self.rows]}


def text_features(split: D.Split, text_mode: str, model_dir: Path, path: Path, device: str = "cpu") -> np.ndarray:
    """[N, T, D_l] text features: BERT over ``text_bert`` (mode "bert") or the pickle's ``text``."""
    if text_mode == "bert":
        if split.text_bert is None:
            raise D.RecoverDataError(f"{path}: the model encodes text with BERT but the split has no 'text_bert'")
        from kbridge.engine.peers.recover.text import check_ids, encode, load_bert

        bert = load_bert(Path(model_dir) / "bert")
        check_ids(bert, split.text_bert, split.ids, str(path))
        return encode(bert, split.text_bert, device=device)
    if split.text is None:
        raise D.RecoverDataError(f"{path}: the model reads text features but the split has no 'text'")
    return split.text


@torch.no_grad()
def predict(model: DiCMoR, text: np.ndarray, audio: np.ndarray, vision: np.ndarray, missing: np.ndarray,
            batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Features [N, T, D_m] and missing [N, 3] bool → predictions [N]. Samples are grouped by
    pattern and each group goes through ``predict_pattern``, which computes only the recoveries its
    pattern needs (a prediction depends on its own sample only, so grouping changes nothing)."""
    model.to(device)
    out = np.zeros(len(audio), np.float32)
    keys = [tuple(bool(v) for v in row) for row in np.asarray(missing)]
    for pat in sorted(set(keys)):
        idx = np.array([i for i, k in enumerate(keys) if k == pat])
        for j in range(0, len(idx), batch_size):
            s = idx[j:j + batch_size]
            pred = model.predict_pattern(*(torch.as_tensor(a[s]).to(device) for a in (text, audio, vision)), pat)
            out[s] = pred.float().cpu().numpy()
    return out


def onnx_predictor(model: DiCMoR, model_dir: Path, steps: int, device: str = "cpu", cache_dir: Path | None = None):
    """``predict``'s ONNX twin: the full graph (every recovery computed, the pattern a tensor input)
    exported once per (weights, config, steps) into the cache and run by onnxruntime."""
    import hashlib

    from kbridge.engine.peers.classify.model import default_cache_dir
    from kbridge.engine.peers.recover.model import OnnxCore, onnx_spec
    from kbridge.engine.runtime.ort import OrtRunner
    from kbridge.export.onnx import export_onnx

    w = Path(model_dir) / "model.safetensors"
    st = w.stat()
    key = hashlib.sha256(f"{w.resolve()}:{st.st_size}:{st.st_mtime_ns}:{model.cfg.to_dict()}:{steps}".encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / "dicmor-onnx" / key / "dicmor.onnx"
    spec = onnx_spec(model.cfg, steps=steps)
    if not path.exists():
        export_onnx(spec, OnnxCore(model.cpu().eval()), path, optimize=False)
    run = OrtRunner(path, spec, provider="cuda" if device.startswith("cuda") else "cpu", device=device)

    def predict_onnx(text, audio, vision, missing, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
        outs = [run({"text": torch.as_tensor(text[i:i + batch_size]), "audio": torch.as_tensor(audio[i:i + batch_size]),
                     "vision": torch.as_tensor(vision[i:i + batch_size]),
                     "missing": torch.as_tensor(np.asarray(missing[i:i + batch_size], dtype=np.int64))})["prediction"]
                for i in range(0, len(audio), batch_size)]
        return torch.cat(outs).float().numpy() if outs else np.zeros(0, np.float32)

    return predict_onnx


def check_dims(model: DiCMoR, feats: tuple[np.ndarray, ...], path: Path) -> None:
    for name, a, want in zip(("text", "audio", "vision"), feats, model.cfg.dims):
        if a.ndim != 3 or a.shape[2] != want:
            raise D.RecoverDataError(f"{path}: {name} features have shape {a.shape}, the model expects [N, T, {want}]")
        if a.shape[1] < model.cfg.kernel:
            raise D.RecoverDataError(f"{path}: {name} has {a.shape[1]} steps, fewer than the conv kernel {model.cfg.kernel}")


def split_features(model: DiCMoR, text_mode: str, model_dir: Path, data: Path, split: str, device: str = "cpu"):
    """(the split, its (text, audio, vision) features checked against the model's dimensions)."""
    s = D.load_split(data, split)
    feats = (text_features(s, text_mode, model_dir, data, device), s.audio, s.vision)
    check_dims(model, feats, Path(data))
    return s, feats


def evaluate(model: DiCMoR, text_mode: str, model_dir: Path, data: Path, missing: list[str] | None = None,
             split: str = "test", batch_size: int = 64, device: str = "cpu", missing_rate: float | None = None,
             seeds: tuple[int, ...] = D.PUBLISHED_SEEDS, rate_batch: int = 32, backend: str = "torch",
             cache_dir: Path | None = None) -> Report:
    """``missing``: pattern names (each applied to every sample), or one JSON pattern file; None:
    every pattern with at least one modality available. ``missing_rate``: the paper's protocol
    instead (``rate_patterns`` per seed, batches of ``rate_batch``), one row per seed and the mean."""
    from kbridge.engine.published import check_device

    check_device(device)
    s, feats = split_features(model, text_mode, model_dir, data, split, device)
    if backend not in ("torch", "onnx"):
        raise D.RecoverDataError(f"unknown backend {backend!r} (torch | onnx)")
    run = predict
    if backend == "onnx":
        onnx_run = onnx_predictor(model, model_dir, feats[1].shape[1], device, cache_dir)

        def run(model, *args):
            return onnx_run(*args)
    rows = []
    if missing_rate is not None:
        if missing:
            raise D.RecoverDataError("--missing and --missing-rate are exclusive")
        if not seeds:
            raise D.RecoverDataError("--missing-rate needs at least one --seed")
        per_seed = []
        for seed in seeds:
            per = D.rate_patterns(len(s.ids), rate_batch, missing_rate, seed)
            pred = run(model, *feats, D.mask(per), batch_size, device)
            per_seed.append(regression_metrics(pred, s.labels))
            rows.append(PatternResult(f"MR {missing_rate:g} seed {seed}", len(per), per_seed[-1]))
        mean = {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}
        rows.append(PatternResult(f"MR {missing_rate:g} mean of {len(seeds)}", len(s.ids), mean))
    elif missing and len(missing) == 1 and (missing[0].endswith(".json") or Path(missing[0]).is_file()):
        per = D.read_pattern_file(Path(missing[0]), s.ids)
        pred = run(model, *feats, D.mask(per), batch_size, device)
        for p in D.ALL_PATTERNS:
            sel = np.array([q == p for q in per], dtype=bool)
            if sel.any():
                rows.append(PatternResult(D.pattern_name(p), int(sel.sum()), regression_metrics(pred[sel], s.labels[sel])))
        rows.append(PatternResult("all", len(per), regression_metrics(pred, s.labels)))
    else:
        patterns = [D.parse_pattern(m) for m in missing] if missing else list(D.ALL_PATTERNS)
        for p in patterns:
            pred = run(model, *feats, D.mask([p] * len(s.ids)), batch_size, device)
            rows.append(PatternResult(D.pattern_name(p), len(s.ids), regression_metrics(pred, s.labels)))
    return Report(str(model_dir), str(data), split, rows)
