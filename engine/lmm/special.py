"""User text can never carry the LMM's own special tokens (image / video placeholders, chat-template
markers, end of turn).

Every text part of every LMM request passes through ``neutralise`` in ``LMMClient.complete`` (the
one seam every backend and both paths, a run and ``kbridge serve``, go through). The token set comes
from the backend's own tokenizer (its special and added tokens: Qwen2-VL's ``<|image_pad|>``,
Idefics3's ``<image>`` / ``<end_of_utterance>`` / ``<row_1_col_1>`` …) plus generic chat-markup
patterns for a backend whose tokenizer is remote (HTTP). An occurrence is broken by a word joiner
(U+2060) after its first character: the text reads the same, but no tokenizer matches it as the
special token, so it is tokenized as plain text.
"""
from __future__ import annotations

import re
from functools import lru_cache

JOINER = "\u2060"

GENERIC = (
    r"<\|[^<>|\s]{1,64}\|>",  # ChatML / Qwen / Llama-3 style: <|im_end|>, <|image_pad|>, <|eot_id|>
    r"</?(?:s|image|video|audio|global-img|fake_token_around_image|end_of_utterance)>",
    r"<row_\d{1,3}_col_\d{1,3}>",  # Idefics3 image tiles
    r"\[/?INST\]",
)
"""Patterns neutralised for every backend (a remote server's tokenizer is not known here)."""


def tokenizer_of(backend):
    """The backend's text tokenizer, when it has one here (hf, in-process vLLM)."""
    for name in ("tok", "tokenizer"):
        tok = getattr(backend, name, None)
        if tok is not None:
            return getattr(tok, "tokenizer", tok)  # a processor wraps its tokenizer
    return None


def special_tokens(tok) -> tuple[str, ...]:
    """Every special token of a Hugging Face tokenizer, and its added tokens that are markup (the
    strings user text must not contain)."""
    if tok is None:
        return ()
    found = set(getattr(tok, "all_special_tokens", []) or [])
    for t in (getattr(tok, "added_tokens_decoder", None) or {}).values():
        content = getattr(t, "content", str(t))
        # added tokens: the special ones, and markup-looking ones (<think>, [IMG]); not added words
        if getattr(t, "special", False) or any(c in content for c in "<>[]|{}"):
            found.add(content)
    return tuple(sorted((t for t in found if t and t.strip() and len(t) > 1), key=len, reverse=True))


@lru_cache(maxsize=16)
def _pattern(tokens: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join([re.escape(t) for t in tokens] + list(GENERIC)))


def pattern_for(backend) -> re.Pattern:
    return _pattern(special_tokens(tokenizer_of(backend)))


def neutralise(text: str, pattern: re.Pattern) -> str:
    """``text`` with every special-token occurrence broken (repeated until none is left: breaking one
    occurrence of overlapping tokens must not leave another whole)."""
    for _ in range(len(text)):
        new = pattern.sub(lambda m: m[0][0] + JOINER + m[0][1:], text)
        if new == text:
            return text
        text = new
    return text


def neutralise_messages(messages: list[dict], pattern: re.Pattern) -> list[dict]:
    """The messages with every text part neutralised (image parts untouched; the input is not changed)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            out.append({**m, "content": neutralise(content, pattern)})
            continue
        out.append({**m, "content": [{**p, "text": neutralise(p["text"], pattern)} if p.get("type") == "text" else p
                                     for p in content]})
    return out
