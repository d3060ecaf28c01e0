"""``kbridge classify eval``: score a dataset with missing modalities as given and, optionally,
filled from a kbridge run, per missing-type group, side by side."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kbridge.engine.peers.classify.config import ClassifyError
from kbridge.engine.peers.classify.data import batch_inputs, fill_completed, label_targets, read_dataset
from kbridge.engine.peers.classify.metrics import PRIMARY, task_metrics

GROUPS = ("text missing", "image missing", "complete", "all")
"""Rows grouped by the missing type the missing config gave them (filled or not)."""


@dataclass
class EvalReport:
    task: str
    model: str
    backend: str
    primary: str
    results: dict
    """condition ("missing" | "completed") → group → metric → value."""
    unmapped_labels: dict
    """Dataset label name → occurrences that are not one of the head's classes."""
    unscored: int
    """Samples left out of the metric because none (or several) of their single labels map."""
    notes: list = field(default_factory=list)
    nothing_scorable: str | None = None
    """Why no sample could be scored (every metric is then null), or None."""

    def to_json(self) -> dict:
        return asdict(self)


@torch.no_grad()
def predict(forward, examples: list, tokenizer, cfg, batch_size: int = 32, device: str = "cpu",
            workers: int = 0) -> torch.Tensor:
    """Logits [N, C]; ``forward`` maps the input dict to logits (torch module or ORT runner).
    Batches are decoded by ``workers`` loader processes while the model computes (0: inline)."""
    starts = list(range(0, len(examples), batch_size))
    loader = torch.utils.data.DataLoader(starts, batch_size=None, num_workers=workers,
                                         collate_fn=lambda i: batch_inputs(examples[i: i + batch_size], tokenizer, cfg))
    out = [forward({k: v.to(device) for k, v in inputs.items()}).float().cpu() for inputs in loader]
    return torch.cat(out) if out else torch.zeros(0, cfg.num_classes)


def _forward(model, model_dir: Path, backend: str, device: str, cache_dir: Path):
    if backend == "torch":
        model.to(device)
        return lambda x: model(x["pixel_values"], x["input_ids"], x["missing_type"])
    if backend == "onnx":
        from kbridge.engine.peers.classify import onnx

        r = onnx.runner(onnx.cached_onnx(model, model_dir, cache_dir), model.cfg, device)
        return lambda x: r(x)["logits"]
    raise ClassifyError(f"unknown backend {backend!r} (torch | onnx)")


def _grouped(task: str, logits: torch.Tensor, targets: torch.Tensor, examples: list) -> dict:
    sel = {"text missing": lambda e: e.missing == "text", "image missing": lambda e: e.missing == "image",
           "complete": lambda e: e.missing is None, "all": lambda e: True}
    res = {}
    for g in GROUPS:
        idx = [i for i, e in enumerate(examples) if sel[g](e)]
        res[g] = task_metrics(task, logits[idx], targets[idx]) if idx else task_metrics(task, logits[:0], targets[:0])
    return res


def evaluate(model_dir: Path, data: Path, missing: Path | None, completed: Path | None = None,
             task: str | None = None, backend: str = "torch", batch_size: int = 32, device: str = "cpu",
             cache_dir: Path | None = None, workers: int = 0) -> EvalReport:
    from kbridge.engine.peers.classify.model import default_cache_dir, load, load_tokenizer
    from kbridge.engine.published import check_device

    check_device(device)
    model = load(model_dir, device="cpu")
    cfg = model.cfg
    if task is not None and task != cfg.task:
        raise ClassifyError(f"--task {task} but the model {model_dir} has a {cfg.task} head")
    tok = load_tokenizer(model_dir)
    given = read_dataset(data, cfg.task, missing, cfg.class_names)
    if not given.examples:
        raise ClassifyError(f"{data}: no samples")
    targets, keep, unmapped = label_targets(given.examples, cfg.class_names, multilabel=cfg.task == "mmimdb")
    conditions = {"missing": given}
    if completed is not None:
        conditions["completed"] = fill_completed(given, completed)
    forward = _forward(model, Path(model_dir), backend, device, Path(cache_dir or default_cache_dir()))
    results, notes = {}, []
    why = None
    if not keep:
        why = (f"nothing scorable: none of the {len(given.examples)} samples has "
               + ("a label among" if cfg.task == "mmimdb" else "exactly one label among")
               + f" the head's {cfg.num_classes} classes")
    for name, d in conditions.items():
        ex = [d.examples[i] for i in keep]
        if not ex:   # no forward pass: there is nothing to score it against
            results[name] = _grouped(cfg.task, torch.zeros(0, cfg.num_classes), targets, ex)
            notes += d.notes
            continue
        t0 = time.perf_counter()
        logits = predict(forward, ex, tok, cfg, batch_size, device, workers)
        dt = time.perf_counter() - t0
        results[name] = _grouped(cfg.task, logits, targets, ex)
        notes += d.notes
        notes.append(f"{name}: {len(ex)} rows in {dt:.1f} s ({len(ex) / max(dt, 1e-9):.1f} rows/s, batch {batch_size}, "
                     f"{backend} on {device}, {workers} loader workers)")
    return EvalReport(cfg.task, str(model_dir), backend, PRIMARY[cfg.task], results, dict(unmapped),
                      len(given.examples) - len(keep), notes, why)


PAPER_METRIC = {"mmimdb": "F1-macro", "food101": "accuracy", "hatememes": "AUROC"}


def paper_row(reports: list, missing: list) -> str:
    """One line in the papers' layout (REP's Table 1): the "all" column ×100 of each missing
    table, labelled by the type in its file name (``…_missing_<type>_<ratio>.pt``)."""
    import re

    cells = []
    for r, m in zip(reports, missing):
        t = re.search(r"_missing_(text|image|both)_(\d+)", Path(m).name)
        label = f"{t.group(1)} {t.group(2)[0]}.{t.group(2)[1:]}" if t else Path(m).name
        v = r.results["missing"]["all"][r.primary]
        cells.append(f"{label}: {'n/a' if v is None else f'{100 * v:.2f}'}")
    r = reports[0]
    return f"paper row ({r.task} {PAPER_METRIC.get(r.task, r.primary)} ×100, all samples): " + " / ".join(cells)
