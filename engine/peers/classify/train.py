"""``kbridge classify train``: fit the learnable prompts (and the head) on a frozen backbone.

The data streams: each step decodes and encodes only its own batch (a ``DataLoader`` over the
examples, ``workers`` processes decoding images beside the training), so memory does not grow with
the training set. The learning rate warms up linearly over the first ``warmup`` fraction of the
steps and then decays by a cosine to 0 (the papers' ViLT-style schedule); on a GPU the forward runs
under fp16 autocast with a gradient scaler. With validation examples, the task's metric is computed
at every epoch's end (and every ``val_every`` steps), and the trainable weights of the best evaluation are kept
(the papers' ``val/the_metric`` checkpoint). Training runs in epochs (each a seeded permutation of
the data) and saves its whole state every epoch (and every N steps), so a killed run resumes and
ends as an uninterrupted one would."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

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


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch: a permutation of the ``n`` samples drawn from (seed, epoch) alone, cut into
    batches (the last one smaller), so any step's batch is known without replaying the others."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    return [perm[i: i + batch_size] for i in range(0, n, batch_size)]


def _batches(n: int, batch_size: int, seed: int, start: int, total: int):
    """The batches of steps ``start`` … ``total - 1`` (epoch after epoch)."""
    per = -(-n // batch_size)
    for step in range(start, total):
        if step == start or step % per == 0:
            epoch = epoch_batches(n, batch_size, seed, step // per)
        yield epoch[step % per]


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


def _save_state(path: Path, state: dict) -> None:
    """Written aside and renamed: a kill while saving leaves the previous state."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(path: Path, fingerprint: dict) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # noqa: BLE001 — any unreadable file is the same one-line error
        raise ClassifyError(f"{path}: cannot read the training state ({e.__class__.__name__}); delete it to start over") from None
    if state.get("fingerprint") != fingerprint:
        diff = sorted(k for k in fingerprint if state.get("fingerprint", {}).get(k) != fingerprint[k])
        raise ClassifyError(f"{path}: a run with other settings ({', '.join(diff)}) left this training state; "
                            "rerun with its settings or delete it to start over")
    return state


def train(model: MissingAwareClassifier, examples: list, tokenizer, steps: int | None = None, lr: float = 1e-3,
          batch_size: int = 16, seed: int = 0, device: str = "cpu", log_every: int = 0, on_log=None,
          warmup: float = 0.1, workers: int = 0, val_examples: list | None = None, val_every: int = 0,
          epochs: int | None = None, state_path: Path | None = None, checkpoint_every: int = 0) -> dict:
    """Adam over the reference's trainable set; BCE-with-logits for mmimdb, cross-entropy otherwise.

    ``epochs`` passes over the data, each in its own seeded order (``steps``, when given too, caps
    the total; ``steps`` alone runs that many batches across epochs). With validation examples
    the metric is computed at every epoch's end (and every ``val_every`` steps when > 0) and the
    best evaluation's trainable weights are kept. With ``state_path`` the training state (the
    trainable weights, optimizer, scheduler, gradient scaler, RNG, step, best evaluation) is
    saved at every epoch's end and every ``checkpoint_every`` steps, and a state found there is
    resumed: a killed run continues where its last save left it and ends as an uninterrupted
    one would. Batches are encoded as they are drawn (``workers`` loader processes). Returns
    {"steps", "epochs", "loss_first", "loss_last", "trainable", "resumed_from", ...}."""
    from kbridge.engine.published import check_device

    check_device(device)
    cfg = model.cfg
    multilabel = cfg.task == "mmimdb"
    targets, keep, unmapped = label_targets(examples, cfg.class_names, multilabel)
    if not keep:
        raise ClassifyError("no training sample has a label among the head's classes "
                            f"(unmapped: {', '.join(list(unmapped)[:5])})")
    examples = [examples[i] for i in keep]
    if epochs is None and steps is None:
        raise ClassifyError("give the number of epochs (or of steps)")
    if (epochs is not None and epochs < 1) or (steps is not None and steps < 1) or batch_size < 1:
        raise ClassifyError("epochs, steps and the batch size must be positive")
    per_epoch = -(-len(examples) // batch_size)
    total = min(x for x in (steps, epochs * per_epoch if epochs else None) if x is not None)

    model.to(device).train()
    names = freeze_for_training(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = list(trainable.values())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: schedule(k, total, warmup))
    amp = torch.device(device).type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    fingerprint = {"samples": len(examples), "batch_size": batch_size, "seed": seed, "total_steps": total, "lr": lr,
                   "warmup": warmup, "task": cfg.task, "classes": list(cfg.class_names), "trainable": sorted(trainable),
                   "validation": len(val_examples or []), "val_every": val_every}
    state = _load_state(Path(state_path), fingerprint) if state_path else None
    start, first, last, best = 0, None, None, None
    if state is not None:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(state["weights"][n])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if amp and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], torch.device(device))
        start, first, last, best = state["step"], state["loss_first"], state["loss_last"], state["best"]

    def collate(idx: list[int]) -> tuple[dict, torch.Tensor]:
        return batch_inputs([examples[i] for i in idx], tokenizer, cfg), targets[torch.tensor(idx)]

    def checkpoint(step: int) -> None:
        _save_state(Path(state_path), {
            "fingerprint": fingerprint, "step": step, "loss_first": first, "loss_last": last, "best": best,
            "weights": {n: p.detach().cpu().clone() for n, p in trainable.items()},
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
            "rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(torch.device(device)) if amp else None})

    loader = torch.utils.data.DataLoader(list(_batches(len(examples), batch_size, seed, start, total)), batch_size=None,
                                         collate_fn=collate, num_workers=workers)
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    for step, (x, y) in enumerate(loader, start + 1):
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
        epoch_end = step % per_epoch == 0 or step == total
        if val_examples and (epoch_end or (val_every and step % val_every == 0)):
            metric = _validate(model, val_examples, tokenizer, batch_size, device)
            if best is None or (metric is not None and (best[1] is None or metric > best[1])):
                best = (step, metric, {n: p.detach().cpu().clone() for n, p in trainable.items()})
            model.train()
        if state_path and (epoch_end or (checkpoint_every and step % checkpoint_every == 0)):
            checkpoint(step)
        if on_log and log_every and step % log_every == 0:
            on_log(step, last)
    model.eval()
    if best is not None:   # the papers keep the checkpoint with the best validation metric
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(best[2][n])
    return {"steps": total, "epochs": total / per_epoch, "loss_first": first, "loss_last": last,
            "trainable": len(names), "best_step": best[0] if best else None,
            "best_metric": best[1] if best else None, "resumed_from": start or None,
            "trainable_parameters": sum(p.numel() for p in params), "samples": len(examples),
            "unmapped_labels": dict(unmapped)}
