"""Regression metrics of CMU-MOSI / MOSEI as MMSA (and DiCMoR) define them (REFERENCE.md §4.6).

- ``acc2``: on samples whose truth is non-zero, accuracy of (pred > 0) against (truth > 0);
- ``f1``: weighted F1 of the same binary decision on the same subset (per-class F1 weighted by
  the class's support in the truth);
- ``acc7``: round(clip(·, −3, 3)) equality, over all samples (numpy rounding: half to even);
- ``mae``: mean absolute error; ``corr``: Pearson correlation, over all samples.
  (The reference computes Corr but does not report it; we do.)
- MMSA's "Has0" pair over all samples: ``acc2_has0`` / ``f1_has0``, (pred ≥ 0) against
  (truth ≥ 0), accuracy and weighted F1; ``acc5``: round(clip(·, −2, 2)) equality (Mult_acc_5).
Undefined values (no non-zero truth, constant predictions) are NaN.
"""
from __future__ import annotations

import math

import numpy as np


def weighted_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """Weighted F1 over the classes present in ``truth`` (sklearn's ``average="weighted"``)."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.size == 0:
        return math.nan
    total = 0.0
    for c in np.unique(truth):
        tp = np.sum((pred == c) & (truth == c))
        fp = np.sum((pred == c) & (truth != c))
        fn = np.sum((pred != c) & (truth == c))
        f1 = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
        total += f1 * np.sum(truth == c)
    return float(total / truth.size)


def regression_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    if pred.shape != truth.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {truth.shape[0]} labels")
    nz = truth != 0
    acc2 = float(np.mean((pred[nz] > 0) == (truth[nz] > 0))) if nz.any() else math.nan
    f1 = weighted_f1(truth[nz] > 0, pred[nz] > 0) if nz.any() else math.nan
    acc7 = float(np.mean(np.round(np.clip(pred, -3, 3)) == np.round(np.clip(truth, -3, 3)))) if pred.size else math.nan
    mae = float(np.mean(np.abs(pred - truth))) if pred.size else math.nan
    has0_t, has0_p = truth >= 0, pred >= 0
    acc2_has0 = float(np.mean(has0_p == has0_t)) if pred.size else math.nan
    f1_has0 = weighted_f1(has0_t, has0_p) if pred.size else math.nan
    acc5 = float(np.mean(np.round(np.clip(pred, -2, 2)) == np.round(np.clip(truth, -2, 2)))) if pred.size else math.nan
    corr = math.nan
    if pred.size >= 2 and pred.std() > 0 and truth.std() > 0:
        corr = float(np.corrcoef(pred, truth)[0, 1])
    return {"acc2": acc2, "f1": f1, "acc2_has0": acc2_has0, "f1_has0": f1_has0, "acc5": acc5, "acc7": acc7,
            "mae": mae, "corr": corr}
