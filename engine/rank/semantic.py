"""Semantic scoring with CLIP: the available modality encoded once, candidates batched.

Scores are the cosine similarity clipped to [0, 1] (the reference's ×100-and-clip, rescaled so it
sits on the graph score's scale). Texts are truncated to the text tower's limit (77 tokens for
CLIP), so long MM-IMDb plots never crash the scorer. BLIP (rank/blip.py) plugs in beside CLIP;
``MeanScorer`` averages several scorers, as the reference averages CLIP and BLIP.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image


class TextCache:
    """Unit text embeddings by string, oldest dropped first beyond ``max_items`` (triples and
    captions recur across candidates and batches; the soft graph metric embeds each once)."""

    def __init__(self, max_items: int = 20000):
        self.max_items, self.rows = max_items, {}

    def embed(self, texts: list[str], encode) -> torch.Tensor:
        """[N, D]: cached rows, the missing distinct texts encoded in one ``encode`` call."""
        todo = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if todo:
            for t, v in zip(todo, encode(todo)):
                self.rows[t] = v.clone()  # not a view: evicted rows free their memory
            while len(self.rows) > self.max_items:
                self.rows.pop(next(iter(self.rows)))
        return torch.stack([self.rows[t] for t in texts]) if texts else torch.empty(0)


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
        self.cache = TextCache()

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[N, D] unit vectors (cached by text)."""
        return self.cache.embed(texts, self._encode_texts)

    @torch.inference_mode()
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
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


def embedding_scores(scorer, samples, candidates) -> list[list[float]]:
    """Cosine scores of every candidate against its sample's available modality, for any scorer
    with ``embed_texts`` / ``embed_images``: all texts and all images of the batch go through each
    tower in one batched pass."""
    texts, images = [], []  # flattened across the batch
    for s, cands in zip(samples, candidates):
        if s.missing == "image":
            texts.append(s.text)
            images.extend(c.image for c in cands)
        else:
            images.append(s.image)
            texts.extend(c.text for c in cands)
    t_emb, i_emb = scorer.embed_texts(texts), scorer.embed_images(images)
    ti = ii = 0
    out = []
    for s, cands in zip(samples, candidates):
        m = len(cands)
        if s.missing == "image":
            out.append(cosine_scores(t_emb[ti], i_emb[ii:ii + m]) if m else [])
            ti, ii = ti + 1, ii + m
        else:
            out.append(cosine_scores(i_emb[ii], t_emb[ti:ti + m]) if m else [])
            ii, ti = ii + 1, ti + m
    return out


def pair_scores(scorer, samples, candidates) -> list[list[float]]:
    """Per sample, the semantic score of each candidate, in [0, 1]: the scorer's own
    ``pair_scores`` when it has one (BLIP's ITM head, averages), else embedding cosines."""
    own = getattr(scorer, "pair_scores", None)
    return own(samples, candidates) if own else embedding_scores(scorer, samples, candidates)


class MeanScorer:
    """The mean of several scorers' semantic scores (the reference averages CLIP and BLIP).
    Texts and images are embedded, for the soft graph metric and retrieval, by the first one."""

    def __init__(self, scorers: list):
        self.scorers = scorers

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.scorers[0].embed_texts(texts)

    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        return self.scorers[0].embed_images(images)

    def pair_scores(self, samples, candidates) -> list[list[float]]:
        each = [pair_scores(s, samples, candidates) for s in self.scorers]
        return [[sum(v) / len(v) for v in zip(*per)] for per in zip(*each)]
