"""Classifier configuration: the CLIP geometry, the prompt geometry and the task head."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from kbridge.engine.errors import KbridgeError

KINDS = ("dcp", "rep")
TASKS = {"mmimdb": 23, "food101": 101, "hatememes": 2}
"""Task → class count of the published heads."""

MMIMDB_GENRES = ("Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror",
                 "Documentary", "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History",
                 "Music", "Animation", "Musical", "Western", "Sport", "Short", "Film-Noir")
"""The 23 MM-IMDb genres in the order of the published head's outputs (the arrow files' label order)."""

FORMAT = "kbridge-classifier/1"


class ClassifyError(KbridgeError):
    """A classifier, its checkpoint or its evaluation data cannot be used."""


@dataclass(frozen=True)
class ClassifierConfig:
    kind: str = "dcp"
    """``dcp`` (correlated + common + dynamic prompts) or ``rep`` (memory learner with residual α)."""
    task: str = "mmimdb"
    """mmimdb (multi-label, F1), food101 (single-label, accuracy) or hatememes (binary, AUROC)."""
    class_names: tuple = MMIMDB_GENRES
    """Names of the head's outputs, in order; dataset labels are mapped onto them by name."""
    prompt_length: int = 36
    """Tokens inserted per layer-0 tower: a third correlated, a third common, a third dynamic."""
    prompt_depth: int = 6
    """Layers 0..depth-1 get fresh correlated prompts; common and dynamic ones are carried through."""
    reduction: int = 16
    """DCP bottleneck: Linear(dv+dt → (dv+dt)/r) in the correlated MLPs, dt/r in the common ones."""
    rdn_hidden: int = 256
    """REP ResidualDynamicNet hidden width."""
    seed: int = 0
    """Seed the reference's construction used (it fixes the untrained dynamic queries)."""
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp: int = 3072
    patch_size: int = 16
    image_size: int = 224
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp: int = 2048
    vocab_size: int = 49408
    context_length: int = 77
    embed_dim: int = 512
    """Width of each tower's projected feature; the head sees 2 × embed_dim."""
    attn_implementation: str = field(default="sdpa")
    """transformers attention kernel for the CLIP layers (sdpa | eager)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def tokens_per_prompt(self) -> int:
        return self.prompt_length // 3

    def validate(self) -> "ClassifierConfig":
        if self.kind not in KINDS:
            raise ClassifyError(f"unknown classifier kind {self.kind!r} (known: {', '.join(KINDS)})")
        if self.task not in TASKS:
            raise ClassifyError(f"unknown task {self.task!r} (known: {', '.join(TASKS)})")
        if self.prompt_length % 3 or self.prompt_length <= 0:
            raise ClassifyError(f"prompt_length must be a positive multiple of 3, not {self.prompt_length}")
        if not 1 <= self.prompt_depth <= min(self.vision_layers, self.text_layers):
            raise ClassifyError(f"prompt_depth {self.prompt_depth} must be in 1..{min(self.vision_layers, self.text_layers)}")
        return self

    def to_json(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return {"format": FORMAT, **d}

    @classmethod
    def from_json(cls, d: dict) -> "ClassifierConfig":
        if d.get("format") != FORMAT:
            raise ClassifyError(f"not a kbridge classifier config (format {d.get('format')!r}, expected {FORMAT})")
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["class_names"] = tuple(kw.get("class_names", ()))
        return cls(**kw).validate()


def default_class_names(task: str) -> tuple:
    if task == "mmimdb":
        return MMIMDB_GENRES
    if task == "hatememes":
        return ("not_hateful", "hateful")
    return tuple(f"class_{i}" for i in range(TASKS[task]))


def full_config(kind: str = "dcp", task: str = "mmimdb", **kw) -> ClassifierConfig:
    """The published architecture: ViT-B/16, prompt length 36, depth 6."""
    return ClassifierConfig(kind=kind, task=task, class_names=kw.pop("class_names", default_class_names(task)),
                            **kw).validate()


def tiny_config(kind: str = "dcp", task: str = "mmimdb", vocab_size: int = 1000, **kw) -> ClassifierConfig:
    """Tiny widths, same structure: two widths (so the vision/text concat is exercised), prompt
    layers followed by plain layers, three prompt kinds of two tokens each."""
    base = dict(prompt_length=6, prompt_depth=2, reduction=4, rdn_hidden=16, vision_width=48, vision_layers=3,
                vision_heads=4, vision_mlp=96, patch_size=8, image_size=32, text_width=32, text_layers=3,
                text_heads=4, text_mlp=64, vocab_size=vocab_size, context_length=77, embed_dim=24)
    base.update(kw)
    return full_config(kind, task, **base)


def read_config(model_dir: Path) -> ClassifierConfig:
    p = Path(model_dir) / "config.json"
    try:
        return ClassifierConfig.from_json(json.loads(p.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ClassifyError(f"{p}: not a readable classifier config ({e})") from e


def with_classes(cfg: ClassifierConfig, names) -> ClassifierConfig:
    return replace(cfg, class_names=tuple(names))
