"""MIRe weights: our model directory, the tiny twin, the full-size config, the published checkpoint.

Our directory (what ``kbridge models convert-mire`` writes and the tiny twin is):

- ``config.json`` — ``MireConfig`` (with ``"kbridge_model": "mire"``);
- ``model.safetensors`` — the state dict, keys exactly as the published checkpoint names them:
  ``model.bert.*``, ``model.linear.weight`` [dim, 768], ``vision_tower.vision_tower.vision_model.*``,
  ``query_fusion.{proj.0, proj.1, k_state, v_state, o_proj.0, o_proj.1, split_mlp.0, split_mlp.2}.*``;
- the BERT tokenizer files and the CLIP image processor's ``preprocessor_config.json``.

The published checkpoint (``train_retrieval.py``, REFERENCE.md §5.3) is a pickle
``{"model": state_dict, "optimizer", "scheduler", "config" (OmegaConf), "epoch", "scaler"}``;
its directory holds the ColBERT HF ``config.json`` and the tokenizer. The pickled OmegaConf object
loads as inert stand-ins (``engine.published``), so neither omegaconf nor ``--trust-checkpoint``
is needed. ``position_ids`` buffers (present or absent depending on
the transformers version that saved them) and BERT's unused pooler are dropped; every other key
must match in name and shape. transformers 5 names the CLIP vision weights one level flatter
(no ``vision_model.``); files always hold the published names, mapped on load and save.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from kbridge.engine import twins
from kbridge.engine.errors import KbridgeError
from kbridge.engine.retrieve.mire.encoder import D_MARKER, Q_MARKER, MireEncoder
from kbridge.engine.retrieve.mire.model import MireConfig, MireModel

WEIGHTS = "model.safetensors"


class CheckpointError(KbridgeError):
    """A MIRe checkpoint or model directory cannot be read, or does not fit the architecture."""


def full_size_config(**over) -> MireConfig:
    """ColBERTv2's BERT (bert-base-uncased) + 768 → 128, CLIP ViT-B/32 at 224 px, 16 + 12 tokens."""
    bert = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return MireConfig(**{"bert": bert, "vision": vision, **over})


def tiny_config(vocab_size: int) -> MireConfig:
    """The twin: the real token layout (16 + 12 visual tokens), narrow and shallow towers. The towers
    are 64 wide with one head, so head counts follow the hidden // 64 rule of converted checkpoints."""
    bert = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                intermediate_size=96, max_position_embeddings=192, type_vocab_size=2)
    vision = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1,
                  image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return MireConfig(dim=32, bert=bert, vision=vision)


def meta_model(cfg: MireConfig) -> MireModel:
    """The architecture without memory (parameters on the meta device), for counting."""
    with torch.device("meta"):
        return MireModel(cfg)


# ---------------------------------------------------------------- our directory

def _processor(image_size: int):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size})


def save_dir(model: MireModel, tokenizer, out: Path, processor=None) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=1) + "\n")
    save_file({k: v.detach().contiguous() for k, v in published_state(model).items()}, str(out / WEIGHTS))
    tokenizer.save_pretrained(out)
    (processor or _processor(model.cfg.vision["image_size"])).save_pretrained(out)
    return out


def load_dir(path: Path, device: str = "cpu") -> MireEncoder:
    from safetensors.torch import load_file
    from transformers import BertTokenizer, CLIPImageProcessorPil

    path = Path(path)
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a MIRe model directory ({e})") from e
    if raw.get("kbridge_model") != "mire":
        raise CheckpointError(f"{path}: config.json is not a MIRe config (convert the published checkpoint "
                              f"with `kbridge models convert-mire`)")
    model = MireModel(MireConfig.from_dict(raw))
    load_state(model, load_file(str(path / WEIGHTS)), str(path / WEIGHTS))
    return MireEncoder(model, BertTokenizer.from_pretrained(path), CLIPImageProcessorPil.from_pretrained(path),
                       device=device)


def resolve(spec: str, cache_dir: Path, device: str = "cpu") -> MireEncoder:
    """``"tiny"`` (the twin, built into the cache on first use) or one of our directories."""
    from kbridge.engine import zoo

    path = zoo.ensure_tiny("mire", cache_dir, builder=build_tiny) if spec == "tiny" else Path(spec).expanduser()
    return load_dir(path, device)


def build_tiny(out: Path) -> None:
    """The twin: a BERT WordPiece vocabulary with MIRe's [unused0] / [unused1] markers, seeded weights."""
    from kbridge.engine.twins import write_bert_tokenizer

    tok = write_bert_tokenizer(out, max_length=192, markers=(Q_MARKER, D_MARKER))
    torch.manual_seed(23)
    model = MireModel(tiny_config(len(tok)))
    save_dir(model, tok, out)


twins.register("mire", build_tiny)


# ---------------------------------------------------------------- the published checkpoint

PUBLISHED_VISION = "vision_tower.vision_tower.vision_model."


def _vision_prefix(model: MireModel) -> str:
    """Our key prefix of the CLIP vision weights: transformers 5 flattens CLIPVisionModel (no
    ``vision_model.`` level, remapped only inside ``from_pretrained``), older versions keep it."""
    tower = model.vision_tower.vision_tower
    return "vision_tower.vision_tower." + ("vision_model." if hasattr(tower, "vision_model") else "")


def published_state(model: MireModel) -> dict:
    """The state dict under the published key names."""
    ours = _vision_prefix(model)
    return {(PUBLISHED_VISION + k[len(ours):] if k.startswith(ours) and not k.startswith(PUBLISHED_VISION)
             else k): v for k, v in model.state_dict().items()}


def _tolerated(key: str) -> bool:
    return key.endswith("position_ids") or key.startswith("model.bert.pooler.")


def load_state(model: MireModel, state: dict, source: str) -> None:
    """Strict load after dropping the tolerated keys; names every missing / unexpected / misshapen key."""
    ours = _vision_prefix(model)
    state = {(ours + k[len(PUBLISHED_VISION):] if k.startswith(PUBLISHED_VISION) else k): v
             for k, v in state.items() if not _tolerated(k)}
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(want[k].shape)})" for k in want
              if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or extra or shapes:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})" if extra else "",
                 f"wrong shapes: {'; '.join(shapes[:3])}" if shapes else ""]
        raise CheckpointError(f"{source}: does not fit the MIRe architecture: " + ", ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)


def read_published(path: Path, trust: bool = False) -> dict:
    """The ``"model"`` state dict of a published MIRe checkpoint (its OmegaConf config loads as
    inert stand-ins: engine.published)."""
    from kbridge.engine.published import PublishedCheckpointError, load

    path = Path(path)
    try:
        obj = load(path, trust)
    except PublishedCheckpointError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict (MIRe's train_retrieval.py "
                              f"layout), got {type(obj).__name__}")
    state = obj["model"]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: 'model' holds non-tensor entries ({', '.join(map(str, bad[:3]))})")
    return state


def read_tokenizer(tdir: Path, vocab_size: int):
    """The BERT tokenizer in ``tdir``, checked to be the checkpoint's: vocab.txt (or tokenizer.json)
    is there and its size is the word-embedding size (transformers otherwise builds a 5-token
    vocabulary from nothing, and every word becomes [UNK])."""
    from transformers import BertTokenizer

    from kbridge.engine.published import PublishedCheckpointError, checked_tokenizer

    tdir = Path(tdir)
    try:
        return checked_tokenizer(
            BertTokenizer, tdir, (tdir / "vocab.txt").exists() or (tdir / "tokenizer.json").exists(),
            "no BERT tokenizer (vocab.txt or tokenizer.json) for the MIRe checkpoint; pass --tokenizer DIR "
            "(the ColBERTv2 / bert-base-uncased tokenizer directory)", vocab_size, "BERT", "word embedding")
    except PublishedCheckpointError as e:
        raise CheckpointError(str(e)) from None


def _layers(state: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def config_from_state(state: dict, bert_json: dict | None = None, **over) -> MireConfig:
    """The architecture a state dict was saved from (head counts: the HF config beside the
    checkpoint for BERT when given, else hidden // 64, true of BERT-base/large and CLIP B and L)."""
    try:
        we = state["model.bert.embeddings.word_embeddings.weight"]
        pe = state["vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"]
        npos = state["vision_tower.vision_tower.vision_model.embeddings.position_embedding.weight"].shape[0]
        dim = state["model.linear.weight"].shape[0]
        bert = dict(vocab_size=we.shape[0], hidden_size=we.shape[1],
                    num_hidden_layers=_layers(state, "model.bert.encoder.layer."),
                    num_attention_heads=int((bert_json or {}).get("num_attention_heads", we.shape[1] // 64)),
                    intermediate_size=state["model.bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
                    max_position_embeddings=state["model.bert.embeddings.position_embeddings.weight"].shape[0],
                    type_vocab_size=state["model.bert.embeddings.token_type_embeddings.weight"].shape[0])
        vp = "vision_tower.vision_tower.vision_model.encoder.layers."
        vision = dict(hidden_size=pe.shape[0], patch_size=pe.shape[2],
                      image_size=pe.shape[2] * math.isqrt(npos - 1),
                      num_hidden_layers=_layers(state, vp), num_attention_heads=pe.shape[0] // 64,
                      intermediate_size=state[vp + "0.mlp.fc1.weight"].shape[0],
                      hidden_act="quick_gelu", layer_norm_eps=1e-5)
        num_tokens = state["query_fusion.split_mlp.2.weight"].shape[0] // dim
        num_heads = state["query_fusion.k_state.weight"].shape[0] // dim
    except KeyError as e:
        raise CheckpointError(f"not a MIRe state dict: no {e.args[0]}") from e
    return MireConfig(dim=dim, num_tokens=num_tokens, num_heads=num_heads, bert=bert, vision=vision, **over)


MIRE_INFERENCE = {"query_maxlen": 64, "doc_maxlen": 384, "attend_to_mask_tokens": False, "pad_leak": True}
"""MIRe's own indexing and search settings (runs/evaluate_retrieval.py: ColBERTConfig(doc_maxlen=384,
query_maxlen=64); [MASK] positions masked; padded rows leak into the pooling). A converted model
gets them (capped at BERT's positions); the tiny twin keeps training's (MireConfig's defaults)."""


def with_settings(encoder: MireEncoder, **settings) -> MireEncoder:
    """The encoder with inference settings overridden (``None`` values ignored): query_maxlen,
    doc_maxlen, attend_to_mask_tokens, pad_leak."""
    from dataclasses import replace

    over = {k: v for k, v in settings.items() if v is not None}
    unknown = set(over) - set(MIRE_INFERENCE)
    if unknown:
        raise CheckpointError(f"unknown MIRe setting(s) {sorted(unknown)}")
    cfg = replace(encoder.model.cfg, **over)
    limit = cfg.bert["max_position_embeddings"]
    if cfg.query_maxlen > limit or cfg.doc_maxlen > limit or cfg.query_maxlen < 4 or cfg.doc_maxlen < 4:
        raise CheckpointError(f"query / document length {cfg.query_maxlen} / {cfg.doc_maxlen}: must be 4 … {limit} "
                              f"(the BERT's positions)")
    encoder.model.cfg = cfg
    return encoder


def convert_published(ckpt: Path, out: Path, tokenizer_dir: Path | None = None, trust: bool = False) -> Path:
    """Published ``mire_*.pth`` (+ the tokenizer and HF config.json beside it) → our directory,
    written all at once (a failed conversion leaves nothing at ``out``), with MIRe's inference
    settings (``MIRE_INFERENCE``)."""
    from kbridge.engine.published import PublishedCheckpointError, output_dir

    ckpt = Path(ckpt)
    state = read_published(ckpt, trust)
    hf = ckpt.parent / "config.json"
    bert_json = json.loads(hf.read_text()) if hf.exists() else None
    cfg = config_from_state(state, bert_json)
    limit = cfg.bert["max_position_embeddings"]
    cfg = config_from_state(state, bert_json, **{k: min(v, limit) if isinstance(v, int) and not isinstance(v, bool)
                                                  else v for k, v in MIRE_INFERENCE.items()})
    tok = read_tokenizer(Path(tokenizer_dir) if tokenizer_dir else ckpt.parent, cfg.bert["vocab_size"])
    model = MireModel(cfg)
    load_state(model, state, str(ckpt))
    try:
        with output_dir(out) as tmp:
            save_dir(model, tok, tmp)
    except PublishedCheckpointError as e:
        raise CheckpointError(str(e)) from None
    return Path(out)
