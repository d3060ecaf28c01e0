"""A fast fake LMM backend for executor and reliability tests where the tiny twin is not what is
being tested: every answer is a valid instance of its request's schema, a function of the
request's seed only (so runs are reproducible), and free-text requests get a short sentence.

``slow``: sample ids whose requests take ``delay`` seconds (the others answer at once);
``continuous``: declare continuous batching (as the HTTP and vLLM backends do), so the executor
sends each row's requests on their own. ``DyingLMM``: an engine that dies after a number of
requests and then reports ``dead``, as the real backends do.
"""
from __future__ import annotations

import asyncio
import json
import random

from kbridge.engine.lmm import Generation

WORDS = ("red", "cup", "table", "dog", "grass", "small", "wooden", "bright", "photo", "sky", "man", "holds")


def instance(schema: dict, rng: random.Random, depth: int = 0):
    """A value of ``schema`` (the shapes engine/domains/*/schemas.py build: objects, arrays, enums,
    bounded strings and integers)."""
    if "enum" in schema:
        return rng.choice(schema["enum"])
    t = schema.get("type")
    if t == "object":
        return {k: instance(v, rng, depth + 1) for k, v in schema.get("properties", {}).items()}
    if t == "array" and "prefixItems" in schema:
        return [instance(v, rng, depth + 1) for v in schema["prefixItems"]]
    if t == "array":
        lo = schema.get("minItems", 1)
        hi = max(lo, min(schema.get("maxItems", lo + 2), lo + 2))
        return [instance(schema.get("items", {}), rng, depth + 1) for _ in range(rng.randint(lo, hi))]
    if t == "integer":
        return rng.randint(schema.get("minimum", 1), min(schema.get("maximum", 3), schema.get("minimum", 1) + 2))
    if t == "boolean":
        return rng.random() < 0.5
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))


class FakeLMM:
    model_id = "fake-lmm"

    def __init__(self, slow: set[str] | None = None, delay: float = 0.0, continuous: bool = True):
        self.slow, self.delay = slow or set(), delay
        self.continuous_batching = continuous
        self.calls = 0
        self.requests: list = []

    async def generate(self, requests):
        if any(r.sample_id in self.slow for r in requests) and self.delay:
            await asyncio.sleep(self.delay)
        out = []
        for r in requests:
            self.calls += 1
            self.requests.append(r)
            rng = random.Random(r.seed)
            text = json.dumps(instance(r.schema, rng)) if r.schema is not None else \
                "A " + " ".join(rng.choice(WORDS) for _ in range(6)) + "."
            out.append(Generation(text, 20, max(1, len(text) // 4)))
        return out


class DyingLMM(FakeLMM):
    """Answers ``die_after`` requests, then is dead: every request fails at once without reaching
    an engine (what the real backends do once they have seen the death)."""

    def __init__(self, die_after: int):
        super().__init__()
        self.die_after = die_after
        self.dead: str | None = None
        self.refused: list[str] = []
        """Sample ids of the requests that found the engine dead."""

    async def generate(self, requests):
        out = []
        for r in requests:
            if self.dead is None and self.calls >= self.die_after:
                self.dead = "the server at http://127.0.0.1:1/v1 is gone (ConnectError)"
            if self.dead:
                self.refused.append(r.sample_id)
                out.append(Generation("", 0, 0, error=f"LMM server: {self.dead}"))
            else:
                out += await super().generate([r])
        return out
