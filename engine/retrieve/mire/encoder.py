"""Texts and images → token bags: the ColBERT query / document tokenisation around ``MireModel``.

Queries: ``[CLS] [Q] text [SEP]`` then [MASK] up to ``query_maxlen`` (the [Q] marker is BERT's
``[unused0]``); documents: ``[CLS] [D] text [SEP]`` (``[unused1]``), padded with [PAD] to the
batch's longest. Outputs are lists of float32 arrays [n_i, dim] holding only the valid tokens,
ready for ``kbridge.kernels.maxsim.pack``.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import torch

from kbridge.engine.retrieve.mire.model import MireModel

Q_MARKER, D_MARKER = "[unused0]", "[unused1]"


@dataclass
class MireEncoder:
    model: MireModel
    tokenizer: object
    """A BERT (WordPiece) tokenizer with [unused0] / [unused1] in its vocabulary."""
    processor: object
    """The CLIP image processor."""
    device: str = "cpu"
    batch_size: int = 32

    def __post_init__(self):
        tok = self.tokenizer
        self._ids = {name: tok.convert_tokens_to_ids(name) for name in
                     (Q_MARKER, D_MARKER, tok.cls_token, tok.sep_token, tok.mask_token, tok.pad_token)}
        unk = tok.unk_token_id
        self._punct = sorted({i for i in (tok.convert_tokens_to_ids(c) for c in string.punctuation) if i != unk})
        self.model.to(self.device).eval()

    @property
    def dim(self) -> int:
        return self.model.cfg.dim

    def _pieces(self, texts: list[str], room: int) -> list[list[int]]:
        enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
        return [ids[:room] for ids in enc]

    def query_ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (ids [B, query_maxlen], mask [B, query_maxlen]). The mask is all ones when
        ``attend_to_mask_tokens`` (training's convention), else zero at the [MASK] padding."""
        cfg, i = self.model.cfg, self._ids
        n = cfg.query_maxlen
        ids = torch.full((len(texts), n), i[self.tokenizer.mask_token], dtype=torch.long)
        mask = torch.ones((len(texts), n), dtype=torch.long)
        for r, p in enumerate(self._pieces(texts, n - 3)):
            row = [i[self.tokenizer.cls_token], i[Q_MARKER], *p, i[self.tokenizer.sep_token]]
            ids[r, :len(row)] = torch.tensor(row)
            if not cfg.attend_to_mask_tokens:
                mask[r, len(row):] = 0
        return ids, mask

    def doc_ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ (ids, attention mask, kept-token mask) [B, L ≤ doc_maxlen]."""
        i = self._ids
        rows = [[i[self.tokenizer.cls_token], i[D_MARKER], *p, i[self.tokenizer.sep_token]]
                for p in self._pieces(texts, self.model.cfg.doc_maxlen - 3)]
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), i[self.tokenizer.pad_token], dtype=torch.long)
        att = torch.zeros((len(rows), n), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)], att[r, :len(row)] = torch.tensor(row), 1
        keep = att.clone()
        if self.model.cfg.doc_skiplist and self._punct:
            keep[torch.isin(ids, torch.tensor(self._punct))] = 0
        return ids, att, keep

    def pixels(self, images) -> torch.Tensor:
        return self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]

    @torch.inference_mode()
    def encode_queries(self, texts: list[str], images=None) -> list[np.ndarray]:
        """One token bag per query: [28 + valid text tokens, dim] with images, [valid, dim] without."""
        out = []
        for s in range(0, len(texts), self.batch_size):
            ids, mask = self.query_ids(texts[s:s + self.batch_size])
            px = self.pixels(images[s:s + self.batch_size]).to(self.device) if images is not None else None
            q, valid = self.model.query(ids.to(self.device), mask.to(self.device), px)
            out += [qi[vi].float().cpu().numpy() for qi, vi in zip(q, valid)]
        return out

    @torch.inference_mode()
    def encode_docs(self, texts: list[str]) -> list[np.ndarray]:
        """One token bag per passage: [kept tokens, dim]."""
        out = []
        for s in range(0, len(texts), self.batch_size):
            ids, att, keep = self.doc_ids(texts[s:s + self.batch_size])
            d = self.model.doc(ids.to(self.device), att.to(self.device), keep.to(self.device))
            out += [di[ki.bool()].float().cpu().numpy() for di, ki in zip(d, keep)]
        return out

    @torch.inference_mode()
    def encode_image_docs(self, images) -> list[np.ndarray]:
        """One token bag per image document: [28, dim]."""
        # the prompt alone, every position valid, no [MASK] padding (as the reference pools it)
        i = self._ids
        p = self._pieces([self.model.cfg.image_prompt], self.model.cfg.query_maxlen - 3)[0]
        prompt = torch.tensor([[i[self.tokenizer.cls_token], i[Q_MARKER], *p, i[self.tokenizer.sep_token]]])
        out = []
        for s in range(0, len(images), self.batch_size):
            d = self.model.image_doc(self.pixels(images[s:s + self.batch_size]).to(self.device),
                                     prompt.to(self.device))
            out += [di.float().cpu().numpy() for di in d]
        return out
