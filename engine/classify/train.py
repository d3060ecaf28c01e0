"""``kbridge classify train``: fit the learnable prompts (and the head) on a frozen backbone.

A short entry for tests and for fitting prompts to one's own data, not a reproduction of the
papers' training (no schedule, no AMP, no epochs over MM-IMDb)."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from kbridge.engine.classify.config import ClassifyError
from kbridge.engine.classify.data import batch_inputs, label_targets
from kbridge.engine.classify.model import MissingAwareClassifier, freeze_for_training


def with_classes(model: MissingAwareClassifier, names: tuple, seed: int = 0) -> MissingAwareClassifier:
    """The same model with a fresh head over ``names`` (when the data's classes differ)."""
    if tuple(names) == tuple(model.cfg.class_names):
        return model
    cfg = replace(model.cfg, class_names=tuple(names))
    model.cfg = cfg
    model.backbone.cfg = cfg
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(model.head.in_features, len(names))
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.02)
        head.bias.zero_()
    model.head = head.to(model.head.weight.device)
    return model


def train(model: MissingAwareClassifier, examples: list, tokenizer, steps: int = 200, lr: float = 1e-3,
          batch_size: int = 16, seed: int = 0, device: str = "cpu", log_every: int = 0, on_log=None) -> dict:
    """Adam over the reference's trainable set; BCE-with-logits for mmimdb, cross-entropy otherwise.
    Inputs are encoded once up front. Returns {"steps", "loss_first", "loss_last", "trainable"}."""
    from kbridge.engine.published import check_device

    check_device(device)
    cfg = model.cfg
    multilabel = cfg.task == "mmimdb"
    targets, keep, unmapped = label_targets(examples, cfg.class_names, multilabel)
    if not keep:
        raise ClassifyError("no training sample has a label among the head's classes "
                            f"(unmapped: {', '.join(list(unmapped)[:5])})")
    examples = [examples[i] for i in keep]
    inputs = batch_inputs(examples, tokenizer, cfg)                     # every sample, encoded once
    model.to(device).train()
    names = freeze_for_training(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    first = last = None
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(examples), (min(batch_size, len(examples)),), generator=g)
        x = {k: v[idx].to(device) for k, v in inputs.items()}
        y = targets[idx].to(device)
        logits = model(x["pixel_values"], x["input_ids"], x["missing_type"])
        loss = loss_fn(logits, y.float() if multilabel else y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = float(loss.detach())
        first = last if first is None else first
        if on_log and log_every and step % log_every == 0:
            on_log(step, last)
    model.eval()
    return {"steps": steps, "loss_first": first, "loss_last": last, "trainable": len(names),
            "trainable_parameters": sum(p.numel() for p in params), "samples": len(examples),
            "unmapped_labels": dict(unmapped)}
