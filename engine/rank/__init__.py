"""Ranking: semantic and knowledge-graph scores of candidates, combined; the scorer seam."""
from __future__ import annotations

from typing import Protocol


class Scorer(Protocol):
    """Unit embeddings of texts and images (optionally ``pair_scores(samples, candidates)``)."""

    def embed_texts(self, texts: list[str]): ...

    def embed_images(self, images: list): ...
