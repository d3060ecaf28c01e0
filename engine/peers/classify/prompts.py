"""The two prompt learners over the prompted CLIP: DCP's correlated prompts and REP's memories.

Both take the missing-type flag [B] (0 complete, 1 text missing, 2 image missing) and return
per-layer prompts for each tower: layer 0 [B, 2L, d] (correlated + common), layers 1..depth-1
[B, L, d]. Flag → initial tensors (REFERENCE.md §1.2):

    flag  image init        text init        common
    0     visual complete   text complete    common complete
    1     visual complete   text missing     common image
    2     visual missing    text complete    common text

Selection is ``torch.stack([...])[flag]``: an index, not a branch.
"""
from __future__ import annotations

import torch
from torch import nn

from kbridge.engine.peers.classify.config import ClassifierConfig


def _param(*shape: int, std: float = 0.02) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * std)


def _select(flag: torch.Tensor, for0, for1, for2) -> torch.Tensor:
    return torch.stack([for0, for1, for2])[flag]       # [B, L, d]


class DCPPrompts(nn.Module):
    """Correlated prompts: P_k = MLP_k(LN_k(cat[P_img(k-1), P_txt(k-1)])), from flag-chosen initial
    prompts; layer 0 also gets the projected common prompt appended."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        L, dv, dt, r = cfg.tokens_per_prompt, cfg.vision_width, cfg.text_width, cfg.reduction
        both = dv + dt
        self.depth = cfg.prompt_depth
        self.visual_prompt_complete, self.visual_prompt_missing = _param(L, dv), _param(L, dv)
        self.text_prompt_complete, self.text_prompt_missing = _param(L, dt), _param(L, dt)
        self.common_prompt_complete, self.common_prompt_image, self.common_prompt_text = (
            _param(L, dt), _param(L, dt), _param(L, dt))

        def mlp(i: int, h: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(i, h), nn.GELU(), nn.Linear(h, o))

        self.compound_prompt_projections_image = nn.ModuleList(mlp(both, both // r, dv) for _ in range(self.depth))
        self.compound_prompt_projections_text = nn.ModuleList(mlp(both, both // r, dt) for _ in range(self.depth))
        self.layernorm_image = nn.ModuleList(nn.LayerNorm(both) for _ in range(self.depth))
        self.layernorm_text = nn.ModuleList(nn.LayerNorm(both) for _ in range(self.depth))
        self.common_prompt_projection_image = mlp(dt, dt // r, dv)
        self.common_prompt_projection_text = mlp(dt, dt // r, dt)

    def forward(self, flag: torch.Tensor) -> tuple[list, list]:
        pi = _select(flag, self.visual_prompt_complete, self.visual_prompt_complete, self.visual_prompt_missing)
        pt = _select(flag, self.text_prompt_complete, self.text_prompt_missing, self.text_prompt_complete)
        common = _select(flag, self.common_prompt_complete, self.common_prompt_image, self.common_prompt_text)
        imgs, txts = [], []
        for k in range(self.depth):
            c = torch.cat([pi, pt], dim=-1)                                   # [B, L, dv+dt]
            pi = self.compound_prompt_projections_image[k](self.layernorm_image[k](c))
            pt = self.compound_prompt_projections_text[k](self.layernorm_text[k](c))
            imgs.append(pi)
            txts.append(pt)
        imgs[0] = torch.cat([imgs[0], self.common_prompt_projection_image(common)], dim=1)   # [B, 2L, dv]
        txts[0] = torch.cat([txts[0], self.common_prompt_projection_text(common)], dim=1)    # [B, 2L, dt]
        return imgs, txts


class ResidualDynamicNet(nn.Module):
    """fc2(dropout(GELU(LN(fc1(x))))) + skip(x); skip is Identity when the widths match."""

    def __init__(self, i: int, o: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(i, hidden)
        self.layernorm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, o)
        self.drop = nn.Dropout(0.1)
        self.skip = nn.Linear(i, o) if i != o else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(nn.functional.gelu(self.layernorm(self.fc1(x))))) + self.skip(x)


def _unit_noise(*shape: int) -> torch.Tensor:
    n = torch.randn(*shape)
    return n / n.norm(dim=-1, keepdim=True)


class REPMemory(nn.Module):
    """REP's memory learner: DCP's flow with residual nets and one shared blend
    M_k = α·net_k(LN_k(cat[M_img(k-1), M_txt(k-1)])) + (1-α)·M(k-1) for k ≥ 1 (layer 0 unblended)."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        L, dv, dt, h = cfg.tokens_per_prompt, cfg.vision_width, cfg.text_width, cfg.rdn_hidden
        both = dv + dt
        self.depth = cfg.prompt_depth
        self.text_memory_complete, self.text_memory_missing = _param(L, dt), _param(L, dt)
        self.visual_memory_complete, self.visual_memory_missing = _param(L, dv), _param(L, dv)
        self.common_memory_complete, self.common_memory_image, self.common_memory_text = (
            nn.Parameter(_unit_noise(L, dt) + 0.2 * torch.randn(L, dt)) for _ in range(3))
        self.residual_alpha = nn.Parameter(torch.tensor(0.5))
        # present in the published checkpoints, never called by their forward pass
        self.dynamic_common_token_net = ResidualDynamicNet(both, dt, h)
        self.compound_memory_projections_text = nn.ModuleList(ResidualDynamicNet(both, dt, h) for _ in range(self.depth))
        self.compound_memory_projections_image = nn.ModuleList(ResidualDynamicNet(both, dv, h) for _ in range(self.depth))
        self.common_memory_projection_image = ResidualDynamicNet(dt, dv, h)
        self.common_memory_projection_text = ResidualDynamicNet(dt, dt, h)
        self.layernorm_text = nn.ModuleList(nn.LayerNorm(both) for _ in range(self.depth))
        self.layernorm_image = nn.ModuleList(nn.LayerNorm(both) for _ in range(self.depth))

    @torch.no_grad()
    def init_from_clip(self, eot_embedding: torch.Tensor, class_embedding: torch.Tensor) -> None:
        """REP's initialisation: text memories start at the EOT token embedding, visual ones at the
        CLS embedding, each plus 0.2 × unit-norm noise."""
        for p in (self.text_memory_complete, self.text_memory_missing):
            p.copy_(eot_embedding.expand_as(p) + 0.2 * _unit_noise(*p.shape))
        for p in (self.visual_memory_complete, self.visual_memory_missing):
            p.copy_(class_embedding.expand_as(p) + 0.2 * _unit_noise(*p.shape))

    def forward(self, flag: torch.Tensor) -> tuple[list, list]:
        mi = _select(flag, self.visual_memory_complete, self.visual_memory_complete, self.visual_memory_missing)
        mt = _select(flag, self.text_memory_complete, self.text_memory_missing, self.text_memory_complete)
        common = _select(flag, self.common_memory_complete, self.common_memory_image, self.common_memory_text)
        a = self.residual_alpha
        imgs, txts = [], []
        for k in range(self.depth):
            c = torch.cat([mi, mt], dim=-1)                                   # [B, L, dv+dt]
            ni = self.compound_memory_projections_image[k](self.layernorm_image[k](c))
            nt = self.compound_memory_projections_text[k](self.layernorm_text[k](c))
            mi, mt = (ni, nt) if k == 0 else (a * ni + (1 - a) * mi, a * nt + (1 - a) * mt)
            imgs.append(mi)
            txts.append(mt)
        imgs[0] = torch.cat([imgs[0], self.common_memory_projection_image(common)], dim=1)
        txts[0] = torch.cat([txts[0], self.common_memory_projection_text(common)], dim=1)
        return imgs, txts
