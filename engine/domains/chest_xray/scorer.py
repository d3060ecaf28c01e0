"""Semantic scoring for chest X-rays: any CLIP-layout image–text model (a medical one such as
PubMedCLIP, or the tiny twin), with report texts cleaned for the text tower first."""
from __future__ import annotations

from kbridge.engine.domains.chest_xray.record import scoring_text


class ReportScorer:
    """Wraps a scorer; reports lose their "XXXX" anonymisation tokens before being embedded."""

    def __init__(self, inner):
        self.inner = inner

    def embed_texts(self, texts: list[str]):
        return self.inner.embed_texts([scoring_text(t) for t in texts])

    def embed_images(self, images):
        return self.inner.embed_images(images)
