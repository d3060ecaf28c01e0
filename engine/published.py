"""Reading checkpoints as their publishers ship them: without the training packages that pickled
them (PyTorch Lightning, sacred, OmegaConf) and without running code from the file.

``torch.load(weights_only=True)`` refuses every class it does not know. Published checkpoints
pickle a few classes beside the tensors, none of which conversion needs:

- Lightning < 1.5 keys ``callbacks`` by the callback *class* (``ModelCheckpoint`` …) and wraps
  hyper-parameters in ``AttributeDict``; sacred's ``ReadOnlyDict`` / ``ReadOnlyList`` hold the
  config inside them (DCP, REP);
- MIRe's ``train_retrieval.py`` pickles its OmegaConf ``DictConfig`` (containers, nodes,
  metadata, ``typing.Any``).

``PUBLISHED`` maps exactly those names to inert stand-ins: containers load as plain dicts and
lists, every other class as an empty ``Inert`` subclass whose instances only receive their
pickled ``__dict__`` (no method of the file's choosing is ever called). Any other class is refused
with one line naming it.
"""
from __future__ import annotations

import collections
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

from kbridge.engine.errors import KbridgeError


class PublishedCheckpointError(KbridgeError):
    """A checkpoint file is missing, not a torch checkpoint, or pickles a class we do not know."""


class Inert:
    """Stand-in for a publisher class: carries the pickled attributes, does nothing."""

    published_as = ""

    def __repr__(self) -> str:
        return f"<{self.published_as} {vars(self)!r}>"


def _inert(path: str) -> type:
    return type(path.rsplit(".", 1)[1], (Inert,), {"published_as": path, "__module__": __name__})


_CONTAINERS = {
    "pytorch_lightning.utilities.parsing.AttributeDict": dict,
    "lightning_fabric.utilities.data.AttributeDict": dict,
    "lightning.fabric.utilities.data.AttributeDict": dict,
    "sacred.config.custom_containers.ReadOnlyDict": dict,
    "sacred.config.custom_containers.ReadOnlyList": list,
    "collections.defaultdict": collections.defaultdict,
    "argparse.Namespace": _inert("argparse.Namespace"),
    "typing.Any": _inert("typing.Any"),
}
# classes pickled as values (OmegaConf's object_type, PL's hparams types), never called with file data
_TYPES = {f"builtins.{t.__name__}": t for t in (dict, list, tuple, int, float, str, bool)}
_CLASSES = [
    *(f"pytorch_lightning.callbacks.{m}.{c}" for m, c in (
        ("model_checkpoint", "ModelCheckpoint"), ("early_stopping", "EarlyStopping"),
        ("lr_monitor", "LearningRateMonitor"), ("progress", "ProgressBar"), ("gpu_stats_monitor", "GPUStatsMonitor"))),
    "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
    "omegaconf.base.Metadata", "omegaconf.base.ContainerMetadata",
    *(f"omegaconf.nodes.{n}" for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                                       "EnumNode", "PathNode", "BytesNode")),
]
PUBLISHED: dict[str, object] = {**_CONTAINERS, **_TYPES, **{p: _inert(p) for p in _CLASSES}}
"""Publisher class path → what it loads as."""


def load(path: Path, trust: bool = False) -> object:
    """The unpickled checkpoint, publisher classes as stand-ins. ``trust``: full unpickling
    (can run code; only for files the user trusts and whose packages are installed)."""
    path = Path(path)
    if not path.exists():
        raise PublishedCheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise PublishedCheckpointError(f"{path}: not a file")
    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise PublishedCheckpointError(f"{path}: not a torch checkpoint (neither torch.save's zip archive nor a pickle)")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals([(v, k) for k, v in PUBLISHED.items()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = re.search(r"GLOBAL (\S+)", str(e)) or re.search(r"function (\S+)", str(e))
        raise PublishedCheckpointError(
            f"{path}: refused: it pickles {what.group(1) if what else 'an object'}, which is not one of the known "
            f"publisher classes (Lightning callbacks and hyper-parameters, sacred, OmegaConf); if you trust the "
            f"file, pass --trust-checkpoint (full unpickling can run code)") from None
    except ModuleNotFoundError as e:  # trust=True without the publisher's package
        raise PublishedCheckpointError(f"{path}: full unpickling needs the package {e.name!r}; without "
                                       f"--trust-checkpoint the file loads without it") from None
    except (OSError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PublishedCheckpointError(f"{path}: not a readable torch checkpoint ({first})") from None


def plain(obj: object) -> object:
    """Stand-ins as nested dicts (OmegaConf containers as their content), for reading a config."""
    if isinstance(obj, Inert):
        d = vars(obj)
        if "_content" in d:
            return plain(d["_content"])
        if "_val" in d:
            return plain(d["_val"])
        return {k: plain(v) for k, v in d.items() if not k.startswith("_")}
    if isinstance(obj, dict):
        return {k if isinstance(k, (str, int, float, bool)) else getattr(k, "published_as", str(k)): plain(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj



@contextmanager
def output_dir(out: Path):
    """Write a converted model into a temporary sibling of ``out``, renamed into place only when
    the block succeeds: a failed conversion leaves no half-written directory. A previous model
    directory at ``out`` (it has config.json) is replaced; any other non-empty path is refused."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").exists())):
        raise PublishedCheckpointError(f"{out}: exists and is not a model directory; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_device(device: str) -> str:
    """``device`` if torch can use it here; one line otherwise (unknown name, CUDA not available)."""
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise KbridgeError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise KbridgeError(f"--device {device}: no CUDA GPU is available to this torch build; use --device cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise KbridgeError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif d.type != "cpu":
        raise KbridgeError(f"unsupported device {device!r} (use cpu, cuda or cuda:N)")
    return device


def checked_tokenizer(cls, tdir: Path, has_files: bool, missing: str, vocab_size: int, kind: str, embedding: str):
    """``cls.from_pretrained(tdir)``, checked to be the checkpoint's tokenizer: the directory and its
    files are there (``has_files``; ``missing`` says what is not) and the vocabulary is the size of the
    checkpoint's ``embedding``. transformers would otherwise build a near-empty vocabulary from
    nothing, and every text would become unknown tokens."""
    if not tdir.is_dir():
        raise PublishedCheckpointError(f"{tdir}: tokenizer directory not found")
    if not has_files:
        raise PublishedCheckpointError(f"{tdir}: {missing}")
    try:
        tok = cls.from_pretrained(str(tdir))
    except (OSError, ValueError, TypeError) as e:
        raise PublishedCheckpointError(f"{tdir}: not a readable {kind} tokenizer ({str(e).splitlines()[0][:200]})") \
            from None
    if len(tok) != vocab_size:
        raise PublishedCheckpointError(f"{tdir}: the tokenizer has {len(tok)} tokens but the checkpoint's {embedding} "
                                       f"has {vocab_size}: not this model's tokenizer")
    return tok
