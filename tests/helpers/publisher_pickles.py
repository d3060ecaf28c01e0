"""Checkpoints saved the way the publishers save them, without their packages installed.

The classes a real file pickles are recreated under the same module paths and names, registered in
``sys.modules`` only while ``torch.save`` runs, with the same pickled structure:

- a PyTorch Lightning 1.1 ``.ckpt`` (DCP, REP): ``callbacks`` keyed by the ``ModelCheckpoint``
  class, hyper-parameters as an ``AttributeDict`` holding sacred's ``ReadOnlyDict`` config (which
  reduces to its plain-dict copy, as sacred's does);
- MIRe's ``train_retrieval.py`` ``.pth``: ``{"model", "optimizer", "scheduler", "config", "epoch",
  "scaler"}`` with ``config`` an OmegaConf ``DictConfig`` (metadata objects, ``AnyNode`` leaves, a
  nested ``ListConfig``, ``typing.Any`` and a ``defaultdict`` resolver cache, as omegaconf 2.x
  pickles it).
"""
from __future__ import annotations

import sys
import types
import typing
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def _modules(classes: dict[str, list[type]]):
    """Register ``module path → classes`` (and every parent package) for the duration."""
    added = []
    for path, cls_list in classes.items():
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        for cls in cls_list:
            cls.__module__, cls.__qualname__ = path, cls.__name__
            setattr(sys.modules[path], cls.__name__, cls)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def lightning_ckpt(path: Path, state_dict: dict, config: dict | None = None) -> Path:
    """A PL 1.1.4-style checkpoint of ``state_dict``."""
    class AttributeDict(dict):
        pass

    class ReadOnlyDict(dict):
        def __reduce__(self):
            return ReadOnlyDict, (dict(self),)

    class ModelCheckpoint:
        pass

    class LearningRateMonitor:
        pass

    with _modules({"pytorch_lightning.utilities.parsing": [AttributeDict],
                   "pytorch_lightning.callbacks.model_checkpoint": [ModelCheckpoint],
                   "pytorch_lightning.callbacks.lr_monitor": [LearningRateMonitor],
                   "sacred.config.custom_containers": [ReadOnlyDict]}):
        hp = AttributeDict(config=ReadOnlyDict(config or {"prompt_length": 36, "loss_names": {"mmimdb": 1},
                                                          "seed": 0, "missing_rate": 0.7}))
        ckpt = {
            "epoch": 3, "global_step": 120, "pytorch-lightning_version": "1.1.4", "state_dict": state_dict,
            "callbacks": {ModelCheckpoint: {"monitor": "val/the_metric", "best_model_score": torch.tensor(0.52),
                                            "best_model_path": "result/epoch=3-step=120.ckpt",
                                            "current_score": torch.tensor(0.52), "dirpath": "result/"}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-2, "params": [0, 1]}]}],
            "lr_schedulers": [{"base_lrs": [1e-2], "last_epoch": 120, "_step_count": 121, "lr_lambdas": [None]}],
            "hparams_name": "kwargs", "hyper_parameters": hp,
        }
        torch.save(ckpt, path)
    return Path(path)


def mire_pth(path: Path, state_dict: dict) -> Path:
    """A MIRe ``mire_epoch_N.pth`` of ``state_dict`` with its OmegaConf config pickled."""
    class DictConfig:
        pass

    class ListConfig:
        pass

    class Metadata:
        pass

    class ContainerMetadata(Metadata):
        pass

    class AnyNode:
        pass

    def meta(cls, key, object_type):
        m = object.__new__(cls)
        m.__dict__.update(ref_type=typing.Any, object_type=object_type, optional=True, key=key, flags={},
                          flags_root=False, resolver_cache=defaultdict(dict))
        if cls is ContainerMetadata:
            m.__dict__.update(key_type=typing.Any, element_type=typing.Any)
        return m

    def node(parent, key, value):
        if isinstance(value, dict):
            c = object.__new__(DictConfig)
            c.__dict__.update(_metadata=meta(ContainerMetadata, key, dict), _parent=parent, _content={})
            c._content.update({k: node(c, k, v) for k, v in value.items()})
            return c
        if isinstance(value, list):
            c = object.__new__(ListConfig)
            c.__dict__.update(_metadata=meta(ContainerMetadata, key, list), _parent=parent, _content=[])
            c._content.extend(node(c, i, v) for i, v in enumerate(value))
            return c
        n = object.__new__(AnyNode)
        n.__dict__.update(_metadata=meta(Metadata, key, None), _parent=parent, _val=value)
        return n

    with _modules({"omegaconf.dictconfig": [DictConfig], "omegaconf.listconfig": [ListConfig],
                   "omegaconf.base": [Metadata, ContainerMetadata], "omegaconf.nodes": [AnyNode]}):
        cfg = node(None, None, {"model": {"doc_maxlen": 384, "query_maxlen": 64, "n_tokens": [16, 12]},
                                "train": {"lr": 5e-6, "epochs": 2, "batch_size": 64}, "seed": 42})
        torch.save({"model": state_dict, "optimizer": {"state": {}, "param_groups": [{"lr": 5e-6, "params": [0]}]},
                    "scheduler": {"last_epoch": 10, "_step_count": 11}, "config": cfg, "epoch": 1,
                    "scaler": {"scale": 65536.0, "growth_factor": 2.0}}, path)
    return Path(path)
