"""The missing-aware classifier (prompted CLIP + learner + linear head), its directory layout,
its tiny twin and the reference's freezing rules.

A model directory holds ``config.json`` (ClassifierConfig), ``model.safetensors`` (every
parameter and the dynamic-query buffers) and the CLIP tokenizer files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from kbridge.engine.peers.classify.clip_backbone import PromptedCLIP, rebuild_dynamic_queries
from kbridge.engine.peers.classify.config import ClassifierConfig, ClassifyError, read_config, tiny_config
from kbridge.engine.peers.classify.prompts import DCPPrompts, REPMemory


TINY_VERSION = 1
"""Bump when the tiny builder changes, so cached twins rebuild."""


class MissingAwareClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.backbone = PromptedCLIP(cfg)
        self.learner = DCPPrompts(cfg) if cfg.kind == "dcp" else REPMemory(cfg)
        self.head = nn.Linear(2 * cfg.embed_dim, cfg.num_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, missing_type: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, S, S], input_ids [B, ctx] int64, missing_type [B] int64 → logits [B, C]."""
        imgs, txts = self.learner(missing_type)
        fi = self.backbone.encode_image(pixel_values, missing_type, imgs)      # [B, E]
        ft = self.backbone.encode_text(input_ids, missing_type, txts)          # [B, E]
        # the missing modality's half of the feature is zeroed (flag 1: text half, 2: image half)
        fi = torch.where((missing_type != 2)[:, None], fi, torch.zeros_like(fi))
        ft = torch.where((missing_type != 1)[:, None], ft, torch.zeros_like(ft))
        return self.head(torch.cat([fi, ft], dim=-1))


def build(cfg: ClassifierConfig, dynamic: bool = True) -> MissingAwareClassifier:
    """A fresh model. ``dynamic`` fills the dynamic queries by the seeded rebuild (skip it on
    ``meta``, where nothing is drawn)."""
    m = MissingAwareClassifier(cfg)
    if dynamic:
        v, t = rebuild_dynamic_queries(cfg)
        m.backbone.vision_dyn_queries.copy_(v)
        m.backbone.text_dyn_queries.copy_(t)
    if cfg.kind == "rep" and dynamic:
        eot = m.backbone.clip.text_model.embeddings.token_embedding.weight[cfg.vocab_size - 1]
        m.learner.init_from_clip(eot.detach(), m.backbone.clip.vision_model.embeddings.class_embedding.detach())
    return m


def build_meta(cfg: ClassifierConfig) -> MissingAwareClassifier:
    """The architecture on the meta device (no memory, no weights), for counting parameters."""
    with torch.device("meta"):
        return MissingAwareClassifier(cfg)


# ---------------------------------------------------------------- freezing (the reference's rules)

def trainable_names(model: MissingAwareClassifier, task: str | None = None) -> set[str]:
    """Names that train under the reference's rules.

    DCP: the prompt learner, both block-0 dynamic attentions, ln_post, ln_final, the visual
    projection (text_projection stays frozen), and the head. REP on mmimdb / food101: the memory
    learner and the head only; on hatememes REP trains DCP's set as well (REFERENCE.md §3.1).
    """
    task = task or model.cfg.task
    wide = model.cfg.kind == "dcp" or task == "hatememes"
    out = set()
    for name, _ in model.named_parameters():
        if name.startswith(("learner.", "head.")):
            out.add(name)
        elif wide and (name.startswith(("backbone.vision_dyn_attn.", "backbone.text_dyn_attn.",
                                        "backbone.clip.vision_model.post_layernorm.",
                                        "backbone.clip.text_model.final_layer_norm."))
                       or name == "backbone.clip.visual_projection.weight"):
            out.add(name)
    return out


def freeze_for_training(model: MissingAwareClassifier) -> list[str]:
    names = trainable_names(model)
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    return sorted(names)


def parameter_counts(model: MissingAwareClassifier) -> dict:
    names = trainable_names(model)
    counts = {"total": 0, "trainable": 0, "trainable_without_head": 0, "learner": 0}
    for n, p in model.named_parameters():
        counts["total"] += p.numel()
        if n in names:
            counts["trainable"] += p.numel()
            if not n.startswith("head."):
                counts["trainable_without_head"] += p.numel()
        if n.startswith("learner."):
            counts["learner"] += p.numel()
    return counts


# ---------------------------------------------------------------- model directories

def save(model: MissingAwareClassifier, out: Path, tokenizer_dir: Path | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(model.cfg.to_json(), indent=1) + "\n")
    if tokenizer_dir is not None:
        from transformers import CLIPTokenizer

        CLIPTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(out))
    return out


def load(model_dir: Path, device: str = "cpu") -> MissingAwareClassifier:
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    weights = model_dir / "model.safetensors"
    if not weights.exists():
        raise ClassifyError(f"{model_dir}: no model.safetensors")
    with torch.device(device):
        model = MissingAwareClassifier(cfg)
    sd = load_file(str(weights), device=device)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ClassifyError(f"{weights}: does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def load_tokenizer(model_dir: Path):
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, TypeError) as e:
        raise ClassifyError(f"{model_dir}: no CLIP tokenizer files (tokenizer.json, or vocab.json + merges.txt): {e}") from e


# ---------------------------------------------------------------- tiny twin

def tiny_dir(kind: str, task: str, cache_dir: Path) -> Path:
    from kbridge.engine.zoo import tiny_dir as zoo_dir

    return zoo_dir(f"{kind}-{task}", cache_dir)


def build_tiny(out: Path, kind: str = "dcp", task: str = "mmimdb") -> None:
    """Deterministic tiny twin: the zoo's tiny CLIP tokenizer, tiny widths, seeded weights."""
    from transformers import CLIPTokenizer

    from kbridge.engine.twins import write_clip_tokenizer

    write_clip_tokenizer(out)
    tok = CLIPTokenizer.from_pretrained(str(out))
    cfg = tiny_config(kind, task, vocab_size=len(tok))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1600 + (kind == "rep"))
        model = build(cfg)
    save(model, out)


def default_cache_dir() -> Path:
    """The kbridge cache (the same place the zoo builds its twins)."""
    return Path(os.environ.get("KBRIDGE_CACHE") or Path.home() / ".cache" / "kbridge")


def ensure_tiny(kind: str = "dcp", task: str = "mmimdb", cache_dir: Path | None = None) -> Path:
    """Build the twin once into the cache, through the zoo's atomic builder (built aside, renamed)."""
    from kbridge.engine.zoo import ensure_tiny as zoo_ensure

    return zoo_ensure(f"{kind}-{task}", Path(cache_dir or default_cache_dir()),
                      builder=lambda out: build_tiny(out, kind, task))


def resolve(spec: str, kind: str = "dcp", task: str = "mmimdb", cache_dir: Path | None = None) -> Path:
    """``tiny`` → the cached twin; otherwise a model directory."""
    if spec == "tiny":
        return ensure_tiny(kind, task, cache_dir)
    p = Path(spec).expanduser()
    if not (p / "config.json").exists():
        raise ClassifyError(f"{p}: not a classifier directory (no config.json); make one with "
                            f"`kbridge models convert-dcp|convert-rep`")
    return p
