"""``kbridge classify train``: fit the learnable prompts (and the head) on a frozen backbone.

The data streams: each step decodes and encodes only its own batch (a ``DataLoader`` over the
examples, ``workers`` processes decoding images beside the training), so memory does not grow with
the training set. The learning rate warms up linearly over the first ``warmup`` fraction of the
steps and then decays by a cosine to 0 (the papers' ViLT-style schedule); on a GPU the forward runs
under fp16 autocast with a gradient scaler. With validation examples, the task's metric is computed
every ``val_every`` steps and at the end, and the trainable weights of the best evaluation are kept
(the papers' ``val/the_metric`` checkpoint). Still missing against the papers' recipe: epochs and
resume."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from kbridge.engine.peers.classify.config import ClassifyError
from kbridge.engine.peers.classify.data import batch_inputs, label_targets
from kbridge.engine.peers.classify.model import MissingAwareClassifier, freeze_for_training


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


def _sampler(n: int, batch_size: int, steps: int, seed: int):
    """``steps`` batches of random indices (with replacement, as before: the same draws)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randint(0, n, (min(batch_size, n),), generator=g).tolist()


def _validate(model, examples: list, tokenizer, batch_size: int, device: str) -> float | None:
    """The task's primary metric (F1-macro, accuracy, AUROC) on the validation examples."""
    from kbridge.engine.peers.classify.evaluate import predict
    from kbridge.engine.peers.classify.metrics import PRIMARY, task_metrics

    cfg = model.cfg
    targets, keep, _ = label_targets(examples, cfg.class_names, cfg.task == "mmimdb")
    if not keep:
        raise ClassifyError("no validation sample has a label among the head's classes")
    model.eval()
    ex = [examples[i] for i in keep]
    logits = predict(lambda x: model(x["pixel_values"], x["input_ids"], x["missing_type"]), ex, tokenizer, cfg,
                     batch_size, device)
    return task_metrics(cfg.task, logits, targets)[PRIMARY[cfg.task]]


def schedule(step: int, steps: int, warmup: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` × steps, then cosine decay to 0."""
    import math

    w = int(steps * warmup)
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


def train(model: MissingAwareClassifier, examples: list, tokenizer, steps: int = 200, lr: float = 1e-3,
          batch_size: int = 16, seed: int = 0, device: str = "cpu", log_every: int = 0, on_log=None,
          warmup: float = 0.1, workers: int = 0, val_examples: list | None = None, val_every: int = 0) -> dict:
    """Adam over the reference's trainable set; BCE-with-logits for mmimdb, cross-entropy otherwise.
    Batches are encoded as they are drawn (``workers`` loader processes). Returns {"steps",
    "loss_first", "loss_last", "trainable", ...}."""
    from kbridge.engine.published import check_device

    check_device(device)
    cfg = model.cfg
    multilabel = cfg.task == "mmimdb"
    targets, keep, unmapped = label_targets(examples, cfg.class_names, multilabel)
    if not keep:
        raise ClassifyError("no training sample has a label among the head's classes "
                            f"(unmapped: {', '.join(list(unmapped)[:5])})")
    examples = [examples[i] for i in keep]

    def collate(idx: list[int]) -> tuple[dict, torch.Tensor]:
        return batch_inputs([examples[i] for i in idx], tokenizer, cfg), targets[torch.tensor(idx)]

    loader = torch.utils.data.DataLoader(list(_sampler(len(examples), batch_size, steps, seed)), batch_size=None,
                                         collate_fn=collate, num_workers=workers)
    model.to(device).train()
    names = freeze_for_training(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: schedule(k, steps, warmup))
    amp = torch.device(device).type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    first = last = best = None
    for step, (x, y) in enumerate(loader, 1):
        x = {k: v.to(device) for k, v in x.items()}
        y = y.to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.float16, enabled=amp):
            logits = model(x["pixel_values"], x["input_ids"], x["missing_type"])
        loss = loss_fn(logits.float(), y.float() if multilabel else y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        last = float(loss.detach())
        first = last if first is None else first
        if on_log and log_every and step % log_every == 0:
            on_log(step, last)
        if val_examples and (step == steps or (val_every and step % val_every == 0)):
            metric = _validate(model, val_examples, tokenizer, batch_size, device)
            if best is None or (metric is not None and (best[1] is None or metric > best[1])):
                best = (step, metric, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
            model.train()
    model.eval()
    if best is not None:   # the papers keep the checkpoint with the best validation metric
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best[2]:
                    p.copy_(best[2][n])
    return {"steps": steps, "loss_first": first, "loss_last": last, "trainable": len(names),
            "best_step": best[0] if best else None, "best_metric": best[1] if best else None,
            "trainable_parameters": sum(p.numel() for p in params), "samples": len(examples),
            "unmapped_labels": dict(unmapped)}
