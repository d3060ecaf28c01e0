"""The MulT-style (fairseq-style) transformer encoder DiCMoR fuses with (REFERENCE.md §4.2).

Per encoder: the query input (and key/value input, for a crossmodal encoder) is scaled by √E and
gets sinusoidal positions; then ``layers`` pre-LN layers (LN → attention → residual, LN → FFN
E → 4E → E with ReLU → residual), where a crossmodal layer normalises its key/value input with
the same first LayerNorm as the query; then a final LayerNorm. Attention is causal when
``attn_mask`` is set (mask ``triu(−inf, 1 + |Tk − Tq|)``).

Positions follow fairseq's padding rule, which depends on values: a time step whose **first
channel is exactly 0** counts as padding and gets position 0, whose embedding is all zeros; other
steps t (0-based) get position t + 1. We keep the rule, because checkpoints were trained with it.
Sinusoid for position p: [sin(p·f_i), cos(p·f_i)], f_i = exp(−i·ln(10000)/(E/2 − 1)), i < E/2.

Inference only: the reference's dropouts are no-ops in eval mode and are not built.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def positions(x: torch.Tensor) -> torch.Tensor:
    """Sinusoidal embeddings for x [T, B, E] (read off its first channel) → [T, B, E]."""
    T, _, E = x.shape
    half = E // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=x.device) * -(math.log(10000.0) / (half - 1)))
    keep = (x[:, :, 0] != 0).to(x.dtype)  # [T, B]: 0 where the padding rule applies
    pos = torch.arange(1, T + 1, dtype=torch.float32, device=x.device)[:, None] * keep  # [T, B]
    ang = pos[..., None] * freq  # [T, B, E/2]
    emb = torch.cat([torch.sin(ang), torch.cos(ang)], -1) * keep[..., None]
    if E % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], -1)
    return emb.to(x.dtype)


def causal_mask(tq: int, tk: int, device=None) -> torch.Tensor:
    """[Tq, Tk] float mask: −inf strictly above the diagonal shifted by |Tk − Tq|."""
    full = torch.full((tq, tk), float("-inf"), device=device)
    return torch.triu(full, 1 + abs(tk - tq))


class Layer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)  # in_proj_weight [3E, E], out_proj: the checkpoint's names
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """x [Tq, B, E], kv [Tk, B, E] or None (self-attention) → [Tq, B, E]."""
        q = self.layer_norms[0](x)
        k = q if kv is None else self.layer_norms[0](kv)
        x = x + self.self_attn(q, k, k, attn_mask=mask, need_weights=False)[0]
        return x + self.fc2(torch.relu(self.fc1(self.layer_norms[1](x))))


class Encoder(nn.Module):
    """``trans_*`` in the checkpoint: crossmodal (query ≠ key/value) or self-attention."""

    def __init__(self, dim: int, heads: int, layers: int, attn_mask: bool = True):
        super().__init__()
        self.scale = math.sqrt(dim)
        self.attn_mask = attn_mask
        self.layers = nn.ModuleList(Layer(dim, heads) for _ in range(layers))
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x_in: torch.Tensor, kv_in: torch.Tensor | None = None) -> torch.Tensor:
        """x_in [Tq, B, E], kv_in [Tk, B, E] or None → [Tq, B, E]."""
        x = self.scale * x_in + positions(x_in)
        kv = None if kv_in is None else self.scale * kv_in + positions(kv_in)
        mask = None
        if self.attn_mask:
            mask = causal_mask(x.shape[0], x.shape[0] if kv is None else kv.shape[0], x.device).to(x.dtype)
        for layer in self.layers:
            x = layer(x, kv, mask)
        return self.layer_norm(x)
