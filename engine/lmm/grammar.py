"""Bounded JSON schemas for structured LMM answers: the string, object and array builders every
domain's schemas use, and ``max_chars``, the longest answer a schema admits (the token cap).

Strings are constrained with ``pattern`` (never ``maxLength``: xgrammar 0.2.8 compiles that to a
class admitting raw control characters, STACK.md), so every answer is valid ASCII JSON whose
length has a known ceiling: ``max_chars(schema)``, which the client uses as the token cap (a token
is at least one byte), so an answer is never cut short.
"""
from __future__ import annotations

import json

_WORD = "[A-Za-z0-9,.;:'()/-]"
_LONGEST: dict[str, int] = {}
"""pattern → the longest string it admits (filled by the builders below)."""


def text(max_chars: int) -> dict:
    pattern = f"^[A-Za-z0-9][A-Za-z0-9 ,.'/&-]{{0,{max_chars - 1}}}$"
    _LONGEST[pattern] = max_chars
    return {"type": "string", "pattern": pattern}


def words(lo: int, hi: int) -> dict:
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


def obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "required": required or list(props),
            "additionalProperties": False}


def array(item: dict, lo: int, hi: int) -> dict:
    return {"type": "array", "items": item, "minItems": lo, "maxItems": hi}


def enum(values) -> dict:
    return {"type": "string", "enum": list(values)}
