"""Semantic scoring with CLIP: the available modality encoded once, candidates batched.

Scores are the cosine similarity clipped to [0, 1] (the reference's ×100-and-clip, rescaled so it
sits on the graph score's scale). Texts are truncated to the text tower's limit (77 tokens for
CLIP), so long MM-IMDb plots never crash the scorer.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image


class ClipScorer:
    def __init__(self, path: Path, device: str = "cpu", batch_size: int = 64):
        from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

        self.device, self.batch_size = device, batch_size
        self.model = CLIPModel.from_pretrained(path).to(device).eval()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.improc = CLIPImageProcessorPil.from_pretrained(path)
        self.max_len = min(self.tok.model_max_length, self.model.config.text_config.max_position_embeddings)
        self.towers: dict | None = None
        """Optional {"vision", "text"} runners (engine/runtime) used instead of the torch towers."""

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[N, D] unit vectors."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tok(texts[i:i + self.batch_size], padding=True, truncation=True, max_length=self.max_len,
                           return_tensors="pt").to(self.device)
            if self.towers:
                out.append(self.towers["text"]({"input_ids": enc["input_ids"],
                                                "attention_mask": enc["attention_mask"]})["text_embeds"])
            else:
                out.append(_features(self.model.get_text_features(**enc)))
        return _unit(torch.cat(out)) if out else torch.empty(0)

    @torch.inference_mode()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        out = []
        for i in range(0, len(images), self.batch_size):
            px = self.improc(images=images[i:i + self.batch_size], return_tensors="pt")["pixel_values"]
            if self.towers:
                out.append(self.towers["vision"]({"pixel_values": px})["image_embeds"])
            else:
                out.append(_features(self.model.get_image_features(pixel_values=px.to(self.device, self.model.dtype))))
        return _unit(torch.cat(out)) if out else torch.empty(0)


def _features(out) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output holds the projected features."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu()


def cosine_scores(query: torch.Tensor, candidates: torch.Tensor) -> list[float]:
    """query: [D], candidates: [M, D] (unit vectors) → M scores in [0, 1]."""
    return (candidates @ query).clamp(0.0, 1.0).tolist()
