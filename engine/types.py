"""Plain data passed between stages. No behaviour beyond small conveniences."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from kbridge.engine.errors import KbridgeError

Modality = Literal["image", "text"]


@dataclass(frozen=True)
class Triple:
    head: str
    relation: str
    tail: str

    def as_dict(self) -> dict:
        return {"head": self.head, "relation": self.relation, "tail": self.tail}


@dataclass(frozen=True)
class Sample:
    """One dataset item with what is available. ``missing`` is None for complete samples."""

    sample_id: str  # "<dataset name>:<index>"
    index: int
    text: str | None
    image: Image.Image | None  # RGB, normalised
    missing: Modality | None
    labels: list = field(default_factory=list)
    file_name: str | None = None


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    count: int
    attributes: list[str]


@dataclass(frozen=True)
class Knowledge:
    """What the LMM extracted from the available modality."""

    objects: list[ObjectInfo]
    style: str
    triples: list[Triple]
    medical: dict | None = None
    """The structured radiology record (medical domain only)."""

    def as_dict(self) -> dict:
        d = {
            "objects": [{"name": o.name, "count": o.count, "attributes": o.attributes} for o in self.objects],
            "style": self.style,
            "triples": [t.as_dict() for t in self.triples],
        }
        if self.medical is not None:
            d["medical"] = self.medical
        return d


@dataclass(frozen=True)
class Candidate:
    """A candidate for the missing modality. Exactly one of ``text`` / ``image`` is set. Frozen:
    a stage that adds an image, triples or scores returns a replaced copy."""

    id: str
    source: Literal["generated", "retrieved"]
    text: str | None = None
    image: Image.Image | None = None
    prompt: str | None = None  # the diffusion prompt for generated images
    seed: int | None = None
    triples: list[Triple] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    retriever: str | None = None
    """Which index retrieved it ("faiss", "mire"), for retrieved candidates."""
    refined: bool | None = None
    """With ``generation.refine_top``: whether this generated image went through the refiner and
    the full decode (False: it keeps its cheap preview); None otherwise."""


class SampleError(KbridgeError):
    """A problem with one sample; the run records it and goes on with the others."""

    def __init__(self, sample_id: str, message: str):
        super().__init__(f"{sample_id}: {message}")
        self.sample_id = sample_id
        self.message = message


def derive_seed(root: int, *parts: object) -> int:
    """A reproducible 63-bit seed per (root, sample, purpose, index): distinct samples and
    candidates never share noise (the reference re-uses seed 2025 everywhere)."""
    import hashlib

    h = hashlib.sha256(repr((root, *parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1
