"""Task metrics against values computed by hand."""
from __future__ import annotations

import pytest
import torch

from kbridge.engine.peers.classify.metrics import task_metrics


def test_mmimdb_f1_macro_micro_by_hand():
    # positive logit → predicted (sigmoid > 0.5)
    targets = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    preds = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1]])
    logits = preds * 4.0 - 2.0
    m = task_metrics("mmimdb", logits, targets)
    # per class: c0 TP2 → 1; c1 TP1 FN1 → 2/3; c2 TP1 FP1 FN1 → 1/2; micro TP4 FP1 FN2 → 8/11
    assert m["f1_macro"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3, abs=1e-6)
    assert m["f1_micro"] == pytest.approx(8 / 11, abs=1e-6)
    assert m["f1_weighted"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3, abs=1e-6)   # equal supports
    assert m["n"] == 4


def test_mmimdb_macro_f1_skips_classes_absent_from_targets_and_predictions():
    """torchmetrics 0.9.3 (the papers') averages macro F1 over classes with tp + fp + fn > 0."""
    targets = torch.tensor([[1, 0, 0], [0, 1, 0]])
    logits = torch.tensor([[2.0, -2, -2], [-2, -2, -2]])       # class 0 right, class 1 missed, class 2 absent
    m = task_metrics("mmimdb", logits, targets)
    assert m["f1_macro"] == pytest.approx((1 + 0) / 2)          # not (1 + 0 + 0) / 3
    assert task_metrics("mmimdb", torch.full((2, 3), -2.0), torch.zeros(2, 3, dtype=torch.long))["f1_macro"] is None


def test_food101_accuracy_by_hand():
    logits = torch.tensor([[3., 0, 0], [0, 0, 3], [0, 3, 0], [0, 3, 0], [3, 0, 0]])
    m = task_metrics("food101", logits, torch.tensor([0, 2, 2, 1, 1]))
    assert m["accuracy"] == pytest.approx(3 / 5)


def test_hatememes_auroc_by_hand():
    # p(class 1) = sigmoid(x) is monotone in x: positives {2, 0.5}, negatives {1, -1, -2}
    x = torch.tensor([2.0, 1.0, -1.0, 0.5, -2.0])
    logits = torch.stack([torch.zeros(5), x], dim=1)
    m = task_metrics("hatememes", logits, torch.tensor([1, 0, 0, 1, 0]))
    assert m["auroc"] == pytest.approx(5 / 6, abs=1e-6)          # 5 of the 6 (pos, neg) pairs ordered
    assert m["accuracy"] == pytest.approx(4 / 5)   # p > 0.5 ⇔ x > 0: 2, 1, 0.5 called hateful; only x=1 wrong
    one_class = task_metrics("hatememes", logits[:2], torch.tensor([1, 1]))
    assert one_class["auroc"] is None


def test_empty_group_is_undefined_not_zero():
    m = task_metrics("food101", torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert m == {"accuracy": None, "n": 0}
