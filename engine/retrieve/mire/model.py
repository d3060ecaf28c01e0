"""The MIRe encoders: ColBERT text tokens plus CLIP visual tokens pooled by the text (REFERENCE.md §5.1).

Query of an image and a text (B samples, L = query_maxlen text positions, dim = 128 at full size):

    T   = linear(BERT(ids, mask)) · mask                      [B, L, dim]  (not normalised yet)
    V   = CLIP(pixels): cat[final CLS, penultimate patches]   [B, 1 + S, Dv]  (frozen, no_grad)
    V_g = split_mlp(V_cls) viewed as num_tokens tokens        [B, 16, dim]  ("global" tokens)
    V_m = text-guided pooling of the patches, per head        [B, 12, dim]
    Q   = L2-normalise(cat[V_g, V_m, T])                      [B, 28 + L, dim]

V_m: the text tokens T are the attention queries of every head as they are (no query projection);
keys and values are per-head projections of the patches; softmax over patches; the per-head output
is averaged over the valid text tokens, then LayerNorm + Linear. Information flows from the image
into the visual tokens only under the text's guidance, and never from the text into the CLIP
features (the vision tower sees pixels alone): MIRe's "fusion-free" interaction.

Documents are ColBERTv2 passages: ``[CLS] [D] text [SEP]`` → normalise(linear(BERT) · mask); image
documents are ``V_g`` plus ``V_m`` pooled by a fixed prompt (28 tokens).

Two reference behaviours are fixed here, each behind a config switch (REFERENCE.md §5.4):

- **pad leak** (``MireConfig.pad_leak``, default False): the reference fills the scores of masked
  text rows with -9999, so their softmax is uniform and each such row adds mean(values) to the sum,
  while the divisor counts only valid rows. We zero masked rows before the sum, so the pooled
  tokens equal those of the unpadded query. ``pad_leak=True`` reproduces the reference.
- **train / inference masks** (``MireConfig.attend_to_mask_tokens``, default True, and
  ``query_maxlen``, default 32): MIRe was trained with the [MASK] query augmentation attended and
  kept (every position valid) at query_maxlen 32, but indexes and searches with [MASK] positions
  masked out (ColBERT's default) at query_maxlen 64. We encode queries at inference exactly as in
  training; ``attend_to_mask_tokens=False, query_maxlen=64, pad_leak=True`` is the reference's
  inference.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MireConfig:
    dim: int = 128
    """ColBERT token width (the 768 → 128 projection) and the width of the visual tokens."""
    num_tokens: int = 16
    """Global visual tokens from the CLS feature (``split_mlp``)."""
    num_heads: int = 12
    """Pooling heads = text-guided visual tokens."""
    query_maxlen: int = 32
    """Query text positions, [CLS] [Q] … [SEP] [MASK]…; MIRe's fine-tuning value (64 at its search)."""
    doc_maxlen: int = 180
    """Document text positions; MIRe's fine-tuning value (384 at its indexing)."""
    attend_to_mask_tokens: bool = True
    """Query [MASK] padding attended and kept, as in MIRe's training (False: its inference)."""
    pad_leak: bool = False
    """Reproduce the reference's leak of masked text rows into the pooled tokens (REFERENCE.md §5.4)."""
    doc_skiplist: bool = True
    """Mask punctuation tokens of documents, as ColBERT training and indexing do (the MIRe indexer
    masks only padding)."""
    image_prompt: str = "Can you describe the primary elements in this image?"
    """The fixed query text that pools the visual tokens of image documents."""
    bert: dict = field(default_factory=dict)
    """``transformers.BertConfig`` fields."""
    vision: dict = field(default_factory=dict)
    """``transformers.CLIPVisionConfig`` fields."""

    def to_dict(self) -> dict:
        return {"kbridge_model": "mire", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "MireConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class TextGuidedPooling(nn.Module):
    """``query_fusion``: submodule names match the published keys (proj.0/1, k_state, v_state,
    o_proj.0/1, split_mlp.0/2)."""

    def __init__(self, v_dim: int, dim: int, num_tokens: int, num_heads: int):
        super().__init__()
        self.dim, self.num_tokens, self.num_heads = dim, num_tokens, num_heads
        wide = 2 * num_heads * dim
        self.proj = nn.Sequential(nn.LayerNorm(v_dim), nn.Linear(v_dim, wide), nn.GELU())
        self.k_state = nn.Linear(wide, num_heads * dim, bias=False)
        self.v_state = nn.Linear(wide, num_heads * dim, bias=False)
        self.o_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.split_mlp = nn.Sequential(nn.Linear(v_dim, num_tokens * dim // 2), nn.Tanh(),
                                       nn.Linear(num_tokens * dim // 2, num_tokens * dim))
        for m in self.modules():  # the reference's init: xavier-uniform weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def global_tokens(self, v: torch.Tensor) -> torch.Tensor:
        """v [B, 1 + S, Dv] → [B, num_tokens, dim] from the CLS feature alone."""
        return self.split_mlp(v[:, 0]).view(v.shape[0], self.num_tokens, self.dim)

    def pooled_tokens(self, t: torch.Tensor, t_mask: torch.Tensor, v: torch.Tensor,
                      pad_leak: bool = False) -> torch.Tensor:
        """t [B, L, dim] text tokens (masked rows zero), t_mask [B, L], v [B, 1 + S, Dv] → [B, H, dim]."""
        b, s = v.shape[0], v.shape[1] - 1
        kv = self.proj(v[:, 1:])  # [B, S, 2·H·dim]
        k = self.k_state(kv).view(b, s, self.num_heads, self.dim).transpose(1, 2)  # [B, H, S, dim]
        val = self.v_state(kv).view(b, s, self.num_heads, self.dim).transpose(1, 2)
        # the same text queries for every head: [B, L, dim] x [B, H, S, dim] → [B, H, L, S]
        scores = torch.einsum("bld,bhsd->bhls", t, k) / math.sqrt(self.dim)
        valid = t_mask[:, None, :, None].to(torch.bool)  # [B, 1, L, 1]
        scores = scores.masked_fill(~valid, -9999.0)
        out = scores.softmax(-1) @ val  # [B, H, L, dim]
        if not pad_leak:
            out = out * valid  # masked rows would otherwise add mean(values) each
        pooled = out.sum(2) / (valid.sum(2).to(out.dtype) + 1e-15)  # [B, H, dim]
        return self.o_proj(pooled)


class ColBERTText(nn.Module):
    """``model``: BERT (no pooler) + the bias-free 768 → dim projection (``model.bert`` / ``model.linear``)."""

    def __init__(self, bert_cfg, dim: int):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(bert_cfg, add_pooling_layer=False)
        self.linear = nn.Linear(bert_cfg.hidden_size, dim, bias=False)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] → [B, L, dim] (not masked, not normalised)."""
        return self.linear(self.bert(input_ids=ids, attention_mask=attention_mask).last_hidden_state)


class VisionTower(nn.Module):
    """``vision_tower.vision_tower`` = a CLIPVisionModel; frozen, run without gradients."""

    def __init__(self, vision_cfg):
        super().__init__()
        from transformers import CLIPVisionModel

        self.vision_tower = CLIPVisionModel(vision_cfg)
        self.vision_tower.requires_grad_(False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] → [B, 1 + S, Dv]: the final-layer CLS (before post_layernorm) and the
        penultimate layer's patches."""
        out = self.vision_tower(pixel_values=pixels, output_hidden_states=True)
        return torch.cat([out.hidden_states[-1][:, :1], out.hidden_states[-2][:, 1:]], dim=1)


class MireModel(nn.Module):
    def __init__(self, cfg: MireConfig):
        super().__init__()
        from transformers import BertConfig, CLIPVisionConfig

        self.cfg = cfg
        bert_cfg, vision_cfg = BertConfig(**cfg.bert), CLIPVisionConfig(**cfg.vision)
        self.model = ColBERTText(bert_cfg, cfg.dim)
        self.vision_tower = VisionTower(vision_cfg)
        self.query_fusion = TextGuidedPooling(vision_cfg.hidden_size, cfg.dim, cfg.num_tokens, cfg.num_heads)

    def vision(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_tower(pixels)

    def query(self, ids: torch.Tensor, mask: torch.Tensor, pixels: torch.Tensor | None,
              pad_leak: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids / mask [B, L] (and pixels [B, 3, H, W]) → (Q [B, 28 + L, dim] unit rows or zero rows,
        valid [B, 28 + L] bool). Without pixels: the text tokens alone."""
        leak = self.cfg.pad_leak if pad_leak is None else pad_leak
        m = mask.to(torch.float32)
        t = self.model(ids, mask) * m[..., None]
        if pixels is None:
            return F.normalize(t, dim=-1), mask.bool()
        v = self.vision(pixels)
        vis = torch.cat([self.query_fusion.global_tokens(v), self.query_fusion.pooled_tokens(t, m, v, leak)], 1)
        valid = torch.cat([torch.ones(vis.shape[:2], dtype=torch.bool, device=vis.device), mask.bool()], 1)
        return F.normalize(torch.cat([vis, t], 1), dim=-1), valid

    def doc(self, ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Passages: ids / attention_mask [B, L], keep [B, L] (attention mask less punctuation) →
        [B, L, dim], unit rows where kept, zero rows elsewhere."""
        return F.normalize(self.model(ids, attention_mask) * keep[..., None].to(torch.float32), dim=-1)

    def image_doc(self, pixels: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Image documents: pixels [B, 3, H, W], prompt_ids [1, L] (the fixed prompt, every position
        valid, as the reference) → [B, 28, dim] unit rows."""
        v = self.vision(pixels)
        ids = prompt_ids.expand(v.shape[0], -1)
        ones = torch.ones_like(ids)
        t = self.model(ids, ones)
        vis = torch.cat([self.query_fusion.global_tokens(v),
                         self.query_fusion.pooled_tokens(t, ones.to(torch.float32), v, False)], 1)
        return F.normalize(vis, dim=-1)
