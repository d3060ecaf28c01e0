"""A frozen CLIP (transformers' CLIPModel pieces) with prompts inserted layer by layer.

Token layout per tower (L = prompt_length / 3):

    block 0 input:  [correlated P0 (L) | common (L) | dynamic (L) | tokens]
    block k < depth: the first L positions are replaced by the next correlated prompts P_k
    later blocks:   plain, over every position

The dynamic prompts are one single-head cross-attention from fixed queries (one set per
missing type) onto the block-0 input tokens. The missing type is a [B] int64 tensor that
selects query sets by indexing, so the graph has no Python branch on it (ONNX-exportable).
"""
from __future__ import annotations

import torch
from torch import nn

from kbridge.engine.peers.classify.config import ClassifierConfig


def clip_config(cfg: ClassifierConfig):
    from transformers import CLIPConfig

    c = CLIPConfig(
        text_config=dict(vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, intermediate_size=cfg.text_mlp,
                         num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                         max_position_embeddings=cfg.context_length, hidden_act="quick_gelu",
                         projection_dim=cfg.embed_dim, pad_token_id=0,
                         # CLIP's SOT and EOT are the last two ids of the vocabulary
                         bos_token_id=cfg.vocab_size - 2, eos_token_id=cfg.vocab_size - 1),
        vision_config=dict(hidden_size=cfg.vision_width, intermediate_size=cfg.vision_mlp,
                           num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                           image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_act="quick_gelu",
                           projection_dim=cfg.embed_dim),
        projection_dim=cfg.embed_dim,
    )
    c._attn_implementation = cfg.attn_implementation
    c.text_config._attn_implementation = cfg.attn_implementation
    c.vision_config._attn_implementation = cfg.attn_implementation
    return c


class PromptedCLIP(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        from transformers import CLIPModel

        self.cfg = cfg
        self.clip = CLIPModel(clip_config(cfg))
        L, dv, dt = cfg.tokens_per_prompt, cfg.vision_width, cfg.text_width
        # the reference's block-0 "attn_prompt" / "attn_memory": single head, trained
        self.vision_dyn_attn = nn.MultiheadAttention(dv, 1, batch_first=True)
        self.text_dyn_attn = nn.MultiheadAttention(dt, 1, batch_first=True)
        # fixed queries, [3 (complete, text missing, image missing), L, d]; rebuilt, then saved
        self.register_buffer("vision_dyn_queries", torch.zeros(3, L, dv))
        self.register_buffer("text_dyn_queries", torch.zeros(3, L, dt))
        # causal mask over prompts + text, additive: prompts see earlier prompts, text sees all prompts
        T = cfg.context_length + cfg.prompt_length
        mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)
        self.register_buffer("text_mask", mask[None, None], persistent=False)

    def _layers(self, layers, x: torch.Tensor, prompts: list, mask) -> torch.Tensor:
        L = self.cfg.tokens_per_prompt
        for i, layer in enumerate(layers):
            if 1 <= i < len(prompts):
                x = torch.cat([prompts[i], x[:, L:]], dim=1)  # fresh correlated prompts, the rest carried on
            x = layer(x, mask)
        return x

    def encode_image(self, pixel_values: torch.Tensor, flag: torch.Tensor, prompts: list) -> torch.Tensor:
        """pixel_values [B, 3, S, S] (normalised), flag [B], prompts[0] [B, 2L, dv], prompts[k] [B, L, dv]
        → [B, embed_dim]."""
        vm = self.clip.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixel_values))                      # [B, 1+P, dv]
        q = self.vision_dyn_queries[flag]                                     # [B, L, dv]
        dyn, _ = self.vision_dyn_attn(q, x, x, need_weights=False)
        x = torch.cat([prompts[0], dyn, x], dim=1)                            # [B, 3L+1+P, dv]
        x = self._layers(vm.encoder.layers, x, prompts, None)
        cls = x[:, self.cfg.prompt_length]                                    # CLS sits after the prompts
        return self.clip.visual_projection(vm.post_layernorm(cls))

    def encode_text(self, input_ids: torch.Tensor, flag: torch.Tensor, prompts: list) -> torch.Tensor:
        """input_ids [B, ctx] (SOT … EOT, 0-padded), flag [B], prompts[0] [B, 2L, dt] → [B, embed_dim]."""
        tm = self.clip.text_model
        x = tm.embeddings(input_ids=input_ids)                                # token + position, [B, ctx, dt]
        q = self.text_dyn_queries[flag]
        # no key padding mask: the dynamic queries attend to the pads too, as in the reference
        dyn, _ = self.text_dyn_attn(q, x, x, need_weights=False)
        x = torch.cat([prompts[0], dyn, x], dim=1)                            # [B, 3L+ctx, dt]
        x = self._layers(tm.encoder.layers, x, prompts, self.text_mask)
        x = tm.final_layer_norm(x[:, self.cfg.prompt_length:])
        eot = input_ids.argmax(-1)                                            # EOT has the largest id
        x = torch.gather(x, 1, eot[:, None, None].expand(-1, 1, x.shape[-1]))[:, 0]
        return self.clip.text_projection(x)


def _block(d: int, heads: int, mlp: int) -> None:
    """Construct (and drop) one OpenAI-CLIP residual block, in its parameter-creation order."""
    nn.MultiheadAttention(d, heads)
    nn.LayerNorm(d)
    nn.Linear(d, mlp)
    nn.Linear(mlp, d)
    nn.LayerNorm(d)


def rebuild_dynamic_queries(cfg: ClassifierConfig, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's unregistered dynamic queries, replayed from the seed (REFERENCE.md §1.5).

    The reference draws them from the global CPU generator while it constructs the CLIP model, so
    constructing the same modules in the same order after ``manual_seed(seed)`` reproduces them
    bit-exactly. Returns (vision [3, L, dv], text [3, L, dt]) in the order complete, image, text.
    The caller's RNG state is left untouched.
    """
    seed = cfg.seed if seed is None else seed
    L, dv, dt = cfg.tokens_per_prompt, cfg.vision_width, cfg.text_width
    grid = (cfg.image_size // cfg.patch_size) ** 2 + 1

    def queries(d: int) -> torch.Tensor:
        return torch.stack([nn.init.normal_(torch.empty(L, 1, d), std=0.02)[:, 0] for _ in range(3)])

    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        nn.Conv2d(3, dv, cfg.patch_size, cfg.patch_size, bias=False)
        torch.randn(dv)                      # class embedding
        torch.randn(grid, dv)                # positional embedding
        nn.LayerNorm(dv)                     # ln_pre
        for i in range(cfg.vision_layers):
            _block(dv, cfg.vision_heads, cfg.vision_mlp)
            if i == 0:
                nn.MultiheadAttention(dv, 1)
                vision = queries(dv)
        nn.LayerNorm(dv)                     # ln_post
        torch.randn(dv, cfg.embed_dim)       # proj
        _block(dt, cfg.text_heads, cfg.text_mlp)
        nn.MultiheadAttention(dt, 1)
        text = queries(dt)
    return vision, text
