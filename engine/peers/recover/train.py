"""Training DiCMoR with the reference's loss and schedule (REFERENCE.md §4.1, §4.3, §4.4).

- Loss per batch: L1(prediction, label) + 0.1 · (NLL_l + NLL_v + NLL_a + rec). NLL_m is the
  batch's bits per dimension under the label's class prior, clamped at 0; rec is the MSE of each
  missing modality's recovery to its projected features (summed over the missing modalities).
  The reverse passes are detached, so the flows learn through the NLL alone; the projections
  (and BERT) stay frozen.
- Missing patterns: the paper's protocol at ``missing_rate`` (one pattern per batch, the mixture
  of ``rate_batches``), redrawn every epoch from (seed, epoch).
- Adam (lr 1e-4), gradients clipped by value (0.6) and accumulated over ``update_epochs`` (8)
  batches per optimizer step; ReduceLROnPlateau (factor 0.5, patience 5) and early stopping
  (10 epochs) on the validation L1 loss; the best validation epoch's weights are kept.
- The whole state (weights, Adam, scheduler, RNG, epoch, best) is saved after every epoch when
  ``state_path`` is given, and a state found there is resumed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kbridge.engine.peers.recover import data as D
from kbridge.engine.peers.recover.model import SHORT, DiCMoR


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1000
    """An upper bound: early stopping ends the run (the reference trains until it stops)."""
    batch_size: int = 4
    """MOSI 4, MOSEI 16."""
    lr: float = 1e-4
    grad_clip: float = 0.6
    update_epochs: int = 8
    """Batches per optimizer step (gradient accumulation)."""
    patience: int = 5
    """ReduceLROnPlateau's patience; the learning rate halves."""
    early_stop: int = 10
    missing_rate: float = 0.1
    seed: int = 1111
    nll_weight: float = 0.1


def batch_loss(model: DiCMoR, text, audio, vision, missing: torch.Tensor, labels: torch.Tensor, w: float = 0.1):
    """The reference's training loss of one batch → (loss, L1)."""
    feats, z, logdet = model.complete(text, audio, vision, missing, detach_reverse=True)
    pred = model.fuse(feats)
    l1 = (pred - labels).abs().mean()
    nll = model.bits_per_dim(z, logdet, labels).mean(0).clamp(min=0).sum()
    rec = pred.new_zeros(())
    for i, (m, x) in enumerate(zip(SHORT, (text, audio, vision))):
        sel = missing[:, i].bool()
        if sel.any():
            with torch.no_grad():
                target = getattr(model, f"proj_{m}")(x[sel].transpose(1, 2))
            rec = rec + ((feats[m][sel] - target) ** 2).mean()
    return l1 + w * (nll + rec), l1


@torch.no_grad()
def valid_loss(model: DiCMoR, feats: tuple, labels: np.ndarray, cfg: TrainConfig) -> float:
    """Mean L1 on the validation split under the same protocol (a fixed draw: seed, epoch −1)."""
    model.eval()
    tot = 0.0
    for idx, pat in D.rate_batches(len(labels), cfg.batch_size, cfg.missing_rate, cfg.seed - 1):
        x = [torch.as_tensor(a[idx]) for a in feats]
        miss = torch.as_tensor(D.mask([pat] * len(idx)))
        tot += float((model(*x, miss)[0] - torch.as_tensor(labels[idx])).abs().sum())
    return tot / len(labels)


def _save(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(model: DiCMoR, train_feats: tuple, train_labels: np.ndarray, valid_feats: tuple, valid_labels: np.ndarray,
          cfg: TrainConfig = TrainConfig(), state_path: Path | None = None, on_epoch=None) -> dict:
    """``*_feats``: (text, audio, vision) arrays [N, T, D_m] (text already BERT features). Returns
    {"epochs", "best_epoch", "best_valid", "train_l1" (per epoch), "valid_l1" (per epoch), "resumed_from"}."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=cfg.patience)
    hist = {"train_l1": [], "valid_l1": []}
    start, best, best_epoch, best_w, stale = 0, float("inf"), None, None, 0
    if state_path and Path(state_path).exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        if st["config"] != repr(cfg):
            raise D.RecoverDataError(f"{state_path}: a run with other settings left this training state; "
                                     "rerun with its settings or delete it to start over")
        model.load_state_dict(st["weights"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["rng"])
        start, best, best_epoch, best_w, stale, hist = (st["epoch"], st["best"], st["best_epoch"], st["best_weights"],
                                                        st["stale"], st["history"])
    n = len(train_labels)
    for epoch in range(start, cfg.epochs):
        if stale >= cfg.early_stop:
            break
        model.train()
        opt.zero_grad(set_to_none=True)
        tot, batches = 0.0, D.rate_batches(n, cfg.batch_size, cfg.missing_rate, cfg.seed * 1000 + epoch)
        for k, (idx, pat) in enumerate(batches, 1):
            x = [torch.as_tensor(a[idx]) for a in train_feats]
            miss = torch.as_tensor(D.mask([pat] * len(idx)))
            loss, l1 = batch_loss(model, *x, miss, torch.as_tensor(train_labels[idx]), cfg.nll_weight)
            loss.backward()
            tot += float(l1.detach()) * len(idx)
            if k % cfg.update_epochs == 0 or k == len(batches):
                torch.nn.utils.clip_grad_value_(params, cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
        v = valid_loss(model, valid_feats, valid_labels, cfg)
        sched.step(v)
        hist["train_l1"].append(tot / n)
        hist["valid_l1"].append(v)
        if v < best:
            best, best_epoch, stale = v, epoch + 1, 0
            best_w = {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            stale += 1
        if state_path:
            _save(Path(state_path), {"config": repr(cfg), "epoch": epoch + 1, "weights": model.state_dict(),
                                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                     "rng": torch.get_rng_state(), "best": best, "best_epoch": best_epoch,
                                     "best_weights": best_w, "stale": stale, "history": hist})
        if on_epoch:
            on_epoch(epoch + 1, hist)
    if best_w is not None:
        model.load_state_dict(best_w)
    model.eval()
    return {"epochs": len(hist["valid_l1"]), "best_epoch": best_epoch, "best_valid": best,
            "resumed_from": start or None, **hist}


def train_dir(model: DiCMoR, text_mode: str, model_dir: Path, data: Path, out: Path, cfg: TrainConfig = TrainConfig(),
              on_epoch=None) -> dict:
    """Train a loaded model on the MMSA pickle ``data`` (its train split; validation on its valid
    split) and write the best validation epoch's weights as a model directory ``out`` (what
    ``convert-dicmor`` writes; the BERT directory copied when the text goes in as tokens). The
    training state lives in ``out/train-state.pt`` until the run ends: a killed run resumes there."""
    import shutil

    from kbridge.engine.peers.recover.convert import save_dir
    from kbridge.engine.peers.recover.evaluate import split_features

    (tr, ftr), (va, fva) = (split_features(model, text_mode, model_dir, data, k) for k in ("train", "valid"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = out / "train-state.pt"
    rep = train(model, ftr, tr.labels, fva, va.labels, cfg, state, on_epoch)
    bert = None
    if text_mode == "bert":
        bert = out / "bert"
        if not bert.exists():
            shutil.copytree(Path(model_dir) / "bert", bert)
    save_dir(out, model, bert, source=f"trained from {model_dir} on {data} ({cfg})")
    state.unlink(missing_ok=True)
    return rep
