"""JSON schemas of the general domain's structured answers, built from the knowledge bounds
(bounded strings and arrays from engine/lmm/grammar.py, so every answer has a known longest form)."""
from __future__ import annotations

from kbridge.engine.config import KnowledgeConfig
from kbridge.engine.domains.lmm import triple
from kbridge.engine.lmm.grammar import array, obj, text, words


def _lo(k: KnowledgeConfig, n: int) -> int:
    return n if k.exact else 1


def triples(k: KnowledgeConfig, n: int | None = None) -> dict:
    n = n or k.triples
    return obj({"triples": array(triple(k), _lo(k, n), n)})


def objects(k: KnowledgeConfig) -> dict:
    """Objects with counts and attributes, and the overall style (the reference's turn 2)."""
    item = obj({"name": text(k.name_chars), "count": {"type": "integer", "minimum": 1, "maximum": 99},
                "attributes": array(text(k.name_chars * 3 // 2), 0, k.max_attributes)})
    return obj({"objects": array(item, _lo(k, k.max_objects), k.max_objects),
                "style": text(k.name_chars * 3 // 2)})


def knowledge(k: KnowledgeConfig) -> dict:
    """The whole record in one answer: objects, counts, attributes, style and triples."""
    o = objects(k)["properties"]
    return obj({"objects": o["objects"], "style": o["style"],
                "triples": array(triple(k), _lo(k, k.triples), k.triples)})


def prompts(k: KnowledgeConfig, n: int) -> dict:
    return obj({"prompts": array(words(*k.prompt_words), n, n)})


def prompt(k: KnowledgeConfig) -> dict:
    """One compressed diffusion prompt (the reference's per-candidate compression call)."""
    return obj({"prompt": words(*k.prompt_words)})


def captions(k: KnowledgeConfig, n: int, with_triples: bool = True) -> dict:
    """N captions; each carries its own triples unless the reference chain re-extracts them."""
    props = {"text": words(*k.caption_words)}
    if with_triples:
        props["triples"] = array(triple(k), _lo(k, k.caption_triples), k.caption_triples)
    return obj({"captions": array(obj(props), n, n)})


def caption(k: KnowledgeConfig, with_triples: bool) -> dict:
    """One caption (parallel writing): its text, and its facts when the writer reports them."""
    return captions(k, 1, with_triples)["properties"]["captions"]["items"]
