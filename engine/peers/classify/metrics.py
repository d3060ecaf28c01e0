"""Task metrics (torchmetrics): MM-IMDb F1 (sigmoid, threshold 0.5), Food-101 accuracy (argmax),
Hateful Memes AUROC (softmax probability of class 1)."""
from __future__ import annotations

import torch

PRIMARY = {"mmimdb": "f1_macro", "food101": "accuracy", "hatememes": "auroc"}
"""The number each paper reports per task."""


def task_metrics(task: str, logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """logits [N, C]; targets [N, C] 0/1 (mmimdb) or [N] class ids. Returns metric → float, or
    None where the metric is undefined (no samples; AUROC with one class present)."""
    from torchmetrics.functional import classification as F

    n, c = logits.shape if logits.dim() == 2 else (0, 0)
    if n == 0:
        return {k: None for k in _names(task)} | {"n": 0}
    logits = logits.float()
    if task == "mmimdb":
        p = logits.sigmoid()
        out = {f"f1_{avg}": float(F.multilabel_f1_score(p, targets, num_labels=c, threshold=0.5, average=avg))
               for avg in ("micro", "weighted")}
        out["f1_macro"] = _macro_f1_present(F, p, targets, c)
    elif task == "food101":
        out = {"accuracy": float(F.multiclass_accuracy(logits, targets, num_classes=c, average="micro"))}
    else:
        p1 = logits.softmax(-1)[:, 1]
        out = {"auroc": float(F.binary_auroc(p1, targets)) if targets.unique().numel() == 2 else None,
               "accuracy": float(((p1 > 0.5).long() == targets).float().mean())}
    return out | {"n": int(n)}


def _macro_f1_present(F, p: torch.Tensor, targets: torch.Tensor, c: int) -> float | None:
    """Macro F1 over the classes that occur (in targets or predictions), as torchmetrics 0.9.3 —
    the papers' version — averages it; torchmetrics ≥ 1.0 would count an absent class as 0."""
    per_class = F.multilabel_f1_score(p, targets, num_labels=c, threshold=0.5, average="none")   # [C]
    stats = F.multilabel_stat_scores(p, targets, num_labels=c, threshold=0.5, average="none")    # [C, 5]
    present = (stats[:, 0] + stats[:, 1] + stats[:, 3]) > 0                                      # tp + fp + fn
    return float(per_class[present].mean()) if bool(present.any()) else None


def _names(task: str) -> list[str]:
    return {"mmimdb": ["f1_macro", "f1_micro", "f1_weighted"], "food101": ["accuracy"],
            "hatememes": ["auroc", "accuracy"]}[task]
