"""Semantic scoring with BLIP image-text retrieval (BlipForImageTextRetrieval): two heads.

- ITC: the contrastive projections of the image [CLS] and text [CLS] features; cosine clipped to
  [0, 1], like CLIP. Texts and images are encoded once each, batched (what the reference's scores
  amount to, ×100).
- ITM: the text encoder attends to the image patches and a 2-way head says "match"; the score is
  the softmax probability of the match class, in [0, 1]. One forward per (text, image) pair, all
  pairs of a batch in chunks; each image's patch features are computed once.

Every text is truncated to the model's limit (the text position table and the tokenizer's
model_max_length): the reference passes MM-IMDb plots through untruncated and crashes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from kbridge.engine.rank.semantic import TextCache, embedding_scores


class BlipScorer:
    def __init__(self, path: Path, device: str = "cpu", batch_size: int = 64, head: str = "itc"):
        from transformers import AutoTokenizer, BlipForImageTextRetrieval, BlipImageProcessorPil

        self.device, self.batch_size, self.head = device, batch_size, head
        self.model = BlipForImageTextRetrieval.from_pretrained(path).to(device).eval()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.improc = BlipImageProcessorPil.from_pretrained(path)
        self.max_len = min(self.tok.model_max_length, self.model.config.text_config.max_position_embeddings)
        self.cache = TextCache()

    def _tokens(self, texts: list[str]) -> dict:
        return self.tok(texts, padding=True, truncation=True, max_length=self.max_len,
                        return_tensors="pt").to(self.device)

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        px = self.improc(images=images, return_tensors="pt")["pixel_values"]
        return px.to(self.device, self.model.dtype)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[N, D] unit ITC text features (cached by text)."""
        return self.cache.embed(texts, self._encode_texts)

    @torch.inference_mode()
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self._tokens(texts[i:i + self.batch_size])
            h = self.model.text_encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            out.append(self.model.text_proj(h.last_hidden_state[:, 0, :]))  # [B, D]
        return _unit(torch.cat(out)) if out else torch.empty(0)

    @torch.inference_mode()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        """[N, D] unit ITC image features."""
        out = []
        for i in range(0, len(images), self.batch_size):
            h = self.model.vision_model(pixel_values=self._pixels(images[i:i + self.batch_size])).last_hidden_state
            out.append(self.model.vision_proj(h[:, 0, :]))
        return _unit(torch.cat(out)) if out else torch.empty(0)

    @torch.inference_mode()
    def itm(self, texts: list[str], images: list[Image.Image], pairs: list[tuple[int, int]]) -> list[float]:
        """Match probability of each (text index, image index) pair."""
        if not pairs:
            return []
        feats = []  # each image's patch features once: [N_img, 1 + patches, H]
        for i in range(0, len(images), self.batch_size):
            feats.append(self.model.vision_model(pixel_values=self._pixels(images[i:i + self.batch_size])).last_hidden_state)
        img = torch.cat(feats)
        out = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i:i + self.batch_size]
            enc = self._tokens([texts[t] for t, _ in chunk])
            enc_h = img[[m for _, m in chunk]]
            h = self.model.text_encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                        encoder_hidden_states=enc_h,
                                        encoder_attention_mask=torch.ones(enc_h.shape[:-1], dtype=torch.long,
                                                                          device=enc_h.device))
            logits = self.model.itm_head(h.last_hidden_state[:, 0, :])  # [B, 2]: (no match, match)
            out.extend(logits.float().softmax(-1)[:, 1].cpu().tolist())
        return out

    def pair_scores(self, samples, candidates) -> list[list[float]]:
        """Per sample, each candidate's score in [0, 1] from the configured head(s)."""
        heads = self.head.split("+")
        parts = []
        if "itc" in heads:
            parts.append(embedding_scores(self, samples, candidates))
        if "itm" in heads:
            texts, images, pairs = [], [], []
            for s, cands in zip(samples, candidates):
                if s.missing == "image":
                    t = len(texts)
                    texts.append(s.text)
                    for c in cands:
                        pairs.append((t, len(images)))
                        images.append(c.image)
                else:
                    m = len(images)
                    images.append(s.image)
                    for c in cands:
                        pairs.append((len(texts), m))
                        texts.append(c.text)
            flat = iter(self.itm(texts, images, pairs))
            parts.append([[next(flat) for _ in cands] for cands in candidates])
        return [[sum(v) / len(v) for v in zip(*per)] for per in zip(*parts)]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu()
