"""JSON schemas of every structured answer, built from the knowledge bounds.

Strings are constrained with ``pattern`` (never ``maxLength``: xgrammar 0.2.8 compiles that to a
class admitting raw control characters, STACK.md), so every answer is valid ASCII JSON whose
length has a known ceiling: ``max_chars(schema)``, which the callers use as the token cap
(a token is at least one byte), so an answer is never cut short.
"""
from __future__ import annotations

import json

from kbridge.engine.config import KnowledgeConfig

_WORD = "[A-Za-z0-9,.;:'()/-]"
_LONGEST: dict[str, int] = {}
"""pattern → the longest string it admits (filled by the builders below)."""


def _text(max_chars: int) -> dict:
    pattern = f"^[A-Za-z0-9][A-Za-z0-9 ,.'/&-]{{0,{max_chars - 1}}}$"
    _LONGEST[pattern] = max_chars
    return {"type": "string", "pattern": pattern}


def _words(lo: int, hi: int) -> dict:
    w = f"{_WORD}{{1,16}}"
    pattern = f"^{w}( {w}){{{lo - 1},{hi - 1}}}$"
    _LONGEST[pattern] = 17 * hi - 1
    return {"type": "string", "pattern": pattern}


def max_chars(schema: dict) -> int | None:
    """The longest JSON text an answer to ``schema`` can be, as xgrammar writes it (", " and ": "
    separators, no other whitespace); None when some part is unbounded."""
    t = schema.get("type")
    if "enum" in schema:
        return max(len(json.dumps(v)) for v in schema["enum"])
    if t == "object":
        props = schema.get("properties", {})
        parts = [max_chars(v) for v in props.values()]
        if any(p is None for p in parts):
            return None
        return 2 + sum(len(json.dumps(k)) + 2 + p for k, p in zip(props, parts)) + 2 * max(0, len(parts) - 1)
    if t == "array" and "prefixItems" in schema:  # a fixed tuple (items: false)
        parts = [max_chars(v) for v in schema["prefixItems"]]
        return None if any(p is None for p in parts) else 2 + sum(parts) + 2 * max(0, len(parts) - 1)
    if t == "array":
        item, n = max_chars(schema.get("items", {})), schema.get("maxItems")
        return None if item is None or n is None else 2 + n * item + 2 * max(0, n - 1)
    if t == "string":
        longest = _LONGEST.get(schema.get("pattern", ""))
        return None if longest is None else longest + 2
    if t == "integer" and "minimum" in schema and "maximum" in schema:
        return max(len(str(schema["minimum"])), len(str(schema["maximum"])))
    if t == "boolean":
        return 5
    return None


def _obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "required": required or list(props),
            "additionalProperties": False}


def _array(item: dict, lo: int, hi: int) -> dict:
    return {"type": "array", "items": item, "minItems": lo, "maxItems": hi}


TRIPLE_FIELDS = ("head", "relation", "tail")


def triple(k: KnowledgeConfig) -> dict:
    """One fact as a ``[head, relation, tail]`` tuple: the three strings and nothing else. The
    object form (``{"head": …, "relation": …, "tail": …}``) spends about a third of a triple's
    generated tokens on its keys (22 vs 15 tokens for one short triple with the twin's
    tokenizer); ``extract.parse_triples`` reads both into the same records."""
    name = _text(k.name_chars)
    return {"type": "array", "prefixItems": [name, _text(max(8, k.name_chars * 3 // 4)), name], "items": False,
            "minItems": 3, "maxItems": 3}


def _lo(k: KnowledgeConfig, n: int) -> int:
    return n if k.exact else 1


def triples(k: KnowledgeConfig, n: int | None = None) -> dict:
    n = n or k.triples
    return _obj({"triples": _array(triple(k), _lo(k, n), n)})


def objects(k: KnowledgeConfig) -> dict:
    """Objects with counts and attributes, and the overall style (the reference's turn 2)."""
    obj = _obj({"name": _text(k.name_chars), "count": {"type": "integer", "minimum": 1, "maximum": 99},
                "attributes": _array(_text(k.name_chars * 3 // 2), 0, k.max_attributes)})
    return _obj({"objects": _array(obj, _lo(k, k.max_objects), k.max_objects),
                 "style": _text(k.name_chars * 3 // 2)})


def knowledge(k: KnowledgeConfig) -> dict:
    """The whole record in one answer: objects, counts, attributes, style and triples."""
    o = objects(k)["properties"]
    return _obj({"objects": o["objects"], "style": o["style"],
                 "triples": _array(triple(k), _lo(k, k.triples), k.triples)})


def prompts(k: KnowledgeConfig, n: int) -> dict:
    return _obj({"prompts": _array(_words(*k.prompt_words), n, n)})


def prompt(k: KnowledgeConfig) -> dict:
    """One compressed diffusion prompt (the reference's per-candidate compression call)."""
    return _obj({"prompt": _words(*k.prompt_words)})


def captions(k: KnowledgeConfig, n: int, with_triples: bool = True) -> dict:
    """N captions; each carries its own triples unless the reference chain re-extracts them."""
    props = {"text": _words(*k.caption_words)}
    if with_triples:
        props["triples"] = _array(triple(k), _lo(k, k.caption_triples), k.caption_triples)
    return _obj({"captions": _array(_obj(props), n, n)})
