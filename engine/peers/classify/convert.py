"""Published DCP / REP Lightning checkpoints → a kbridge classifier directory.

The published ``.ckpt`` holds the whole model under ``state_dict``: ``model.prompt_learner.*`` (DCP)
or ``model.memory_learner.*`` (REP), the OpenAI-layout CLIP under ``model.image_encoder.*`` /
``model.text_encoder.*`` (with the block-0 ``attn_prompt`` / ``attn_memory``), and the task head
``<task>_classifier.*``. One table of (reference key, our key, transform) pairs, generated from the
geometry, drives both directions, so nothing can be silently left over or left out.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import torch

from kbridge.engine.peers.classify.config import TASKS, ClassifierConfig, ClassifyError, default_class_names, full_config


class CheckpointError(ClassifyError):
    """A checkpoint cannot be read, is refused by the safe loader, or does not fit the layout."""


# ---------------------------------------------------------------- loading

def load_checkpoint(path: Path, trust: bool = False) -> dict:
    """The checkpoint's state dict (``ckpt["state_dict"]``, or the file itself if it is one). The
    Lightning / sacred classes a published ``.ckpt`` pickles load as stand-ins (engine.published)."""
    from kbridge.engine.published import PublishedCheckpointError, load

    try:
        obj = load(path, trust)
    except PublishedCheckpointError as e:
        raise CheckpointError(str(e)) from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors in the checkpoint")
    return sd


# ---------------------------------------------------------------- the key table

_BLOCK = [("attn.out_proj.weight", "self_attn.out_proj.weight"), ("attn.out_proj.bias", "self_attn.out_proj.bias"),
          ("ln_1.weight", "layer_norm1.weight"), ("ln_1.bias", "layer_norm1.bias"),
          ("mlp.c_fc.weight", "mlp.fc1.weight"), ("mlp.c_fc.bias", "mlp.fc1.bias"),
          ("mlp.c_proj.weight", "mlp.fc2.weight"), ("mlp.c_proj.bias", "mlp.fc2.bias"),
          ("ln_2.weight", "layer_norm2.weight"), ("ln_2.bias", "layer_norm2.bias")]
_MHA = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
_LEARNER = {"dcp": ("prompt_learner", "attn_prompt"), "rep": ("memory_learner", "attn_memory")}


def key_table(cfg: ClassifierConfig, learner_keys: list[str]) -> list[tuple[str, tuple, str]]:
    """(reference key, our keys, transform) with transform ``same`` | ``T`` (transpose) | ``qkv``
    (the packed in-projection split into q, k, v along dim 0)."""
    lname, aname = _LEARNER[cfg.kind]
    ve, te = "model.image_encoder.", "model.text_encoder."
    vo, to = "backbone.clip.vision_model.", "backbone.clip.text_model."
    rows = [("model.logit_scale", ("backbone.clip.logit_scale",), "same")]
    rows += [(f"model.{lname}.{k}", (f"learner.{k}",), "same") for k in learner_keys]
    rows += [(ve + "class_embedding", (vo + "embeddings.class_embedding",), "same"),
             (ve + "positional_embedding", (vo + "embeddings.position_embedding.weight",), "same"),
             (ve + "proj", ("backbone.clip.visual_projection.weight",), "T"),
             (ve + "conv1.weight", (vo + "embeddings.patch_embedding.weight",), "same")]
    rows += [(ve + f"ln_{a}.{p}", (vo + f"{b}.{p}",), "same")
             for a, b in (("pre", "pre_layrnorm"), ("post", "post_layernorm")) for p in ("weight", "bias")]
    rows += [(te + "positional_embedding", (to + "embeddings.position_embedding.weight",), "same"),
             (te + "text_projection", ("backbone.clip.text_projection.weight",), "T"),
             (te + "token_embedding.weight", (to + "embeddings.token_embedding.weight",), "same"),
             (te + "ln_final.weight", (to + "final_layer_norm.weight",), "same"),
             (te + "ln_final.bias", (to + "final_layer_norm.bias",), "same")]
    for ref, ours, n, dyn in ((ve + "transformer.resblocks.", vo + "encoder.layers.", cfg.vision_layers, "vision"),
                              (te + "transformer.resblocks.", to + "encoder.layers.", cfg.text_layers, "text")):
        for i in range(n):
            for p in ("weight", "bias"):
                rows.append((f"{ref}{i}.attn.in_proj_{p}",
                             tuple(f"{ours}{i}.self_attn.{x}_proj.{p}" for x in "qkv"), "qkv"))
            rows += [(f"{ref}{i}.{a}", (f"{ours}{i}.{b}",), "same") for a, b in _BLOCK]
        rows += [(f"{ref}0.{aname}.{k}", (f"backbone.{dyn}_dyn_attn.{k}",), "same") for k in _MHA]
    rows += [(f"{cfg.task}_classifier.{p}", (f"head.{p}",), "same") for p in ("weight", "bias")]
    return rows


def _table_for(cfg: ClassifierConfig):
    from kbridge.engine.peers.classify.model import build_meta

    learner = [k for k in build_meta(cfg).state_dict() if k.startswith("learner.")]
    return key_table(cfg, [k[len("learner."):] for k in learner])


def to_ours(ref: dict, cfg: ClassifierConfig) -> dict:
    """Reference state dict → ours (without the dynamic-query buffers). Raises on any key left
    over or missing."""
    rows = _table_for(cfg)
    known = {r[0] for r in rows}
    unused = sorted(set(ref) - known)
    missing = sorted(known - set(ref))
    if unused or missing:
        raise CheckpointError(f"checkpoint does not fit the {cfg.kind} layout: {len(unused)} unused keys "
                              f"{unused[:3]}, {len(missing)} missing keys {missing[:3]}")
    out = {}
    for rk, ok, how in rows:
        t = ref[rk]
        if how == "T":
            out[ok[0]] = t.t().contiguous()
        elif how == "qkv":
            for name, part in zip(ok, t.chunk(3, dim=0)):
                out[name] = part.contiguous()
        else:
            out[ok[0]] = t
    return out


def to_reference(ours: dict, cfg: ClassifierConfig) -> dict:
    """Our state dict → the published layout (the inverse of ``to_ours``; dynamic queries dropped,
    as the reference never saved them)."""
    out = {}
    for rk, ok, how in _table_for(cfg):
        if how == "T":
            out[rk] = ours[ok[0]].t().contiguous()
        elif how == "qkv":
            out[rk] = torch.cat([ours[k] for k in ok], dim=0)
        else:
            out[rk] = ours[ok[0]]
    return out


# ---------------------------------------------------------------- geometry from shapes

def infer_config(ref: dict, kind: str, vision_heads: int | None = None, text_heads: int | None = None,
                 seed: int = 0) -> ClassifierConfig:
    """The architecture a reference state dict was made for. Head counts are not in the weights:
    CLIP's rule (width / 64) unless given."""
    lname = _LEARNER[kind][0]

    def get(k):
        if k not in ref:
            raise CheckpointError(f"checkpoint is not a {kind.upper()} checkpoint: no {k}")
        return ref[k]

    def count(prefix):
        return len({int(m.group(1)) for k in ref for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m})

    heads = [k[: -len("_classifier.weight")] for k in ref if k.endswith("_classifier.weight")]
    if len(heads) != 1 or heads[0] not in TASKS:
        raise CheckpointError(f"expected one task head <{'|'.join(TASKS)}>_classifier, found {heads or 'none'}")
    task = heads[0]
    ve, te = "model.image_encoder.", "model.text_encoder."
    dv = get(ve + "class_embedding").shape[0]
    dt = get(te + "ln_final.weight").shape[0]
    patch = get(ve + "conv1.weight").shape[-1]
    grid = get(ve + "positional_embedding").shape[0] - 1
    word = "prompt" if kind == "dcp" else "memory"
    L = get(f"model.{lname}.visual_{word}_complete").shape[0]
    depth = count(f"model.{lname}.compound_{word}_projections_image.")
    extra = {}
    if kind == "dcp":
        extra["reduction"] = (dv + dt) // get(f"model.{lname}.compound_prompt_projections_image.0.0.weight").shape[0]
    else:
        extra["rdn_hidden"] = get(f"model.{lname}.compound_memory_projections_image.0.fc1.weight").shape[0]
    n_cls = get(f"{task}_classifier.weight").shape[0]
    names = default_class_names(task)
    cfg = full_config(
        kind, task, class_names=names if len(names) == n_cls else tuple(f"class_{i}" for i in range(n_cls)),
        prompt_length=3 * L, prompt_depth=depth, seed=seed,
        vision_width=dv, vision_layers=count(ve + "transformer.resblocks."), vision_heads=vision_heads or dv // 64,
        vision_mlp=get(ve + "transformer.resblocks.0.mlp.c_fc.weight").shape[0], patch_size=patch,
        image_size=patch * math.isqrt(grid), text_width=dt, text_layers=count(te + "transformer.resblocks."),
        text_heads=text_heads or dt // 64, text_mlp=get(te + "transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        vocab_size=get(te + "token_embedding.weight").shape[0], context_length=get(te + "positional_embedding").shape[0],
        embed_dim=get(ve + "proj").shape[1], **extra)
    if not cfg.vision_heads or not cfg.text_heads or dv % cfg.vision_heads or dt % cfg.text_heads:
        raise CheckpointError(f"head counts {cfg.vision_heads}/{cfg.text_heads} do not divide the widths {dv}/{dt}: "
                              f"pass --vision-heads / --text-heads")
    return cfg


def read_class_names(path: Path) -> tuple:
    """Head class names from a JSON file: a list, a kbridge category.json (``label_name``), or a
    name → index map such as Food-101's class_idx.json."""
    import json

    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable class-name file ({e})") from None
    if isinstance(d, dict) and "label_name" in d:
        d = d["label_name"]
    if isinstance(d, dict) and all(isinstance(v, int) for v in d.values()):
        d = [k for k, _ in sorted(d.items(), key=lambda kv: kv[1])]
    if not isinstance(d, list) or not all(isinstance(x, str) for x in d):
        raise CheckpointError(f"{path}: expected a list of names, a category.json or a name → index map")
    return tuple(d)


def read_tokenizer(tokenizer: Path | None, vocab_size: int):
    """The CLIP tokenizer at ``tokenizer``, checked to be this model's: the files are there and its
    vocabulary is the checkpoint's text-embedding size (a directory without them would otherwise
    give a near-empty tokenizer that turns every text into unknown tokens)."""
    from transformers import CLIPTokenizer

    from kbridge.engine.published import PublishedCheckpointError, checked_tokenizer

    if tokenizer is None:
        raise CheckpointError("no tokenizer: pass --tokenizer DIR (a local CLIP tokenizer directory, e.g. "
                              "openai/clip-vit-base-patch16's tokenizer.json or vocab.json + merges.txt)")
    p = Path(tokenizer)
    try:
        return checked_tokenizer(
            CLIPTokenizer, p, (p / "tokenizer.json").exists() or ((p / "vocab.json").exists() and (p / "merges.txt").exists()),
            "no CLIP tokenizer files (tokenizer.json, or vocab.json + merges.txt)", vocab_size, "CLIP", "text embedding")
    except PublishedCheckpointError as e:
        raise CheckpointError(str(e)) from None


def _check_shapes(sd: dict, cfg: ClassifierConfig) -> None:
    from kbridge.engine.peers.classify.model import build_meta

    want = build_meta(cfg).state_dict()
    bad = [f"{k} {tuple(v.shape)} (expected {tuple(want[k].shape)})" for k, v in sd.items()
           if k in want and tuple(v.shape) != tuple(want[k].shape)]
    if bad:
        raise CheckpointError(f"checkpoint does not fit the {cfg.kind} layout: {len(bad)} wrong-shaped tensors: "
                              + "; ".join(bad[:3]))


def convert(ckpt: Path, out: Path, kind: str, tokenizer: Path | None, trust: bool = False, seed: int = 0,
            vision_heads: int | None = None, text_heads: int | None = None,
            class_names: tuple | None = None) -> dict:
    """Convert once; writes config.json, model.safetensors (with the rebuilt dynamic queries) and
    the tokenizer, all at once (a failed conversion leaves nothing at ``out``). Returns a small report."""
    from kbridge.engine.peers.classify.clip_backbone import rebuild_dynamic_queries
    from kbridge.engine.peers.classify.model import MissingAwareClassifier, save
    from kbridge.engine.published import PublishedCheckpointError, output_dir

    if kind not in _LEARNER:
        raise CheckpointError(f"unknown classifier kind {kind!r}")
    ref = load_checkpoint(ckpt, trust=trust)
    cfg = infer_config(ref, kind, vision_heads, text_heads, seed)
    if class_names is not None:
        if len(class_names) != cfg.num_classes:
            raise CheckpointError(f"{len(class_names)} class names for a head with {cfg.num_classes} outputs")
        cfg = replace(cfg, class_names=tuple(class_names))
    tok = read_tokenizer(tokenizer, cfg.vocab_size)
    sd = to_ours({k: v.float() for k, v in ref.items()}, cfg)
    _check_shapes(sd, cfg)
    sd["backbone.vision_dyn_queries"], sd["backbone.text_dyn_queries"] = rebuild_dynamic_queries(cfg)
    model = MissingAwareClassifier(cfg)
    model.load_state_dict(sd, strict=True)
    try:
        with output_dir(out) as tmp:
            save(model, tmp)
            tok.save_pretrained(str(tmp))
    except PublishedCheckpointError as e:
        raise CheckpointError(str(e)) from None
    return {"kind": kind, "task": cfg.task, "keys": len(ref), "classes": cfg.num_classes, "path": str(out),
            "prompt_length": cfg.prompt_length, "prompt_depth": cfg.prompt_depth}
