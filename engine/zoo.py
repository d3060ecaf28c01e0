"""Model directories: a local Hugging Face / diffusers layout directory, or a tiny twin.

A tiny twin is the real architecture (real transformers / diffusers classes) with a small config,
random weights and a locally built tokenizer. It is built deterministically into the cache on
first use and then loaded by the same ``from_pretrained`` code as real weights, so the tiny
profile exercises the real loading path. This module resolves and caches; the builders are in
engine/twins.py (the engine's own, and those the peers register there).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kbridge.engine.config import PipelineConfig
from kbridge.engine.errors import KbridgeError

log = logging.getLogger(__name__)

ZOO_VERSION = 2
"""Bump when a tiny builder changes, so caches rebuild (2: one BERT tokenizer layout for every twin)."""

MODELS = {
    "lmm": ("Qwen2-VL", "Qwen2-VL-7B-Instruct (or -72B-Instruct-GPTQ-Int8 under vLLM)"),
    "lmm_vllm_cpu": ("Idefics3", "the VL twin vLLM serves on CPU (Qwen2-VL under vLLM needs a GPU box)"),
    "sdxl_base": ("SDXL base", "stable-diffusion-xl-base-1.0"),
    "sdxl_refiner": ("SDXL refiner", "stable-diffusion-xl-refiner-1.0"),
    "clip": ("CLIP", "clip-vit-large-patch14"),
    "cheff": ("Cheff LDM", "Cheff cheff_diff_t2i.pt + cheff_autoencoder.pt via `kbridge models convert-cheff`"),
    "med_clip": ("medical CLIP", "a CLIP-layout medical image-text model, e.g. PubMedCLIP"),
    "blip": ("BLIP (ITC + ITM)", "blip-itm-large-coco"),
    "mire": ("MIRe (ColBERTv2 + CLIP ViT-B/32)", "a MIRe mire_*.pth via `kbridge models convert-mire`"),
}
"""Model slot → (architecture, the real checkpoint the slot is meant for)."""

@dataclass(frozen=True)
class ModelEntry:
    name: str
    spec: str  # "tiny" or a directory
    path: Path
    source: str  # "tiny" | "path"
    ready: bool
    size_bytes: int


class ModelNotFound(KbridgeError, FileNotFoundError):
    """A configured model directory does not exist or is not a model directory."""


def _dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0


SIZES = ("tiny", "small")
"""Twin sizes: ``tiny`` for tests and the default profile, ``small`` (same architectures, wider
and deeper, so model compute rather than Python overhead dominates) for CPU benchmarks."""


def tiny_dir(name: str, cache_dir: Path, size: str = "tiny") -> Path:
    return Path(cache_dir) / "zoo" / f"{size}-{name}-v{ZOO_VERSION}"


def resolve(name: str, cfg: PipelineConfig) -> Path:
    """The directory to load model slot ``name`` from, building the twin if needed."""
    spec = getattr(cfg.models, name)
    if spec in SIZES:
        return ensure_tiny(name, cfg.cache_dir(), spec)
    p = Path(spec).expanduser()
    if not (p / "config.json").exists() and not (p / "model_index.json").exists():
        raise ModelNotFound(f"model {name}: {p} is not a model directory (no config.json or "
                            f"model_index.json); expected a local copy of {MODELS[name][1]}")
    return p


def ensure_tiny(name: str, cache_dir: Path, size: str = "tiny", builder=None) -> Path:
    """Build the twin once (atomically: built aside, then renamed into place), with ``builder(out)``
    when given (a peer's own twin, e.g. ``dicmor``), else the builder registered for ``name`` in
    engine/twins.py."""
    target = tiny_dir(name, cache_dir, size)
    if (target / ".complete").exists():
        return target
    from kbridge.engine.locks import exclusive

    with exclusive(target.parent / f".{target.name}.lock"):  # another process building it: wait, then reuse
        if (target / ".complete").exists():
            return target
        return _build_tiny(name, target, size, builder)


def _build_tiny(name: str, target: Path, size: str, builder) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        log.info("building %s %s into %s", size, name, target)
        if builder is not None:
            builder(tmp)
        else:
            from kbridge.engine.twins import builder_for

            build = builder_for(name)
            build(tmp) if size == "tiny" else build(tmp, size)
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race, or a stale incomplete dir is in the way
            if not (target / ".complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def list_models(cfg: PipelineConfig) -> list[ModelEntry]:
    out = []
    for name in MODELS:
        spec = getattr(cfg.models, name)
        if spec in SIZES:
            p = tiny_dir(name, cfg.cache_dir(), spec)
            out.append(ModelEntry(name, spec, p, spec, (p / ".complete").exists(), _dir_size(p)))
        else:
            p = Path(spec).expanduser()
            ok = (p / "config.json").exists() or (p / "model_index.json").exists()
            out.append(ModelEntry(name, spec, p, "path", ok, _dir_size(p)))
    return out
