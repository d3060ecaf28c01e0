"""kbridge chat messages ↔ the OpenAI chat format (what vLLM, SGLang and llama.cpp's server read).

JSON and image encoding live here, away from the backends' transport code. Images travel as
base64 PNG data URLs: lossless, so a server decodes exactly the pixels the in-process backend
would see (downscaled first when larger than ``max_pixels``).
"""
from __future__ import annotations

import base64
import io
import math

from PIL import Image

_PREFIX = "data:image/png;base64,"


def downscale(img: Image.Image, max_pixels: int) -> Image.Image:
    """The image itself when it fits ``max_pixels``, else a bicubic resize with the aspect kept."""
    w, h = img.size
    if max_pixels <= 0 or w * h <= max_pixels:
        return img
    s = math.sqrt(max_pixels / (w * h))
    return img.resize((max(1, int(w * s)), max(1, int(h * s))), Image.Resampling.BICUBIC)


def image_data_url(img: Image.Image, max_pixels: int) -> str:
    buf = io.BytesIO()
    downscale(img, max_pixels).save(buf, format="PNG")
    return _PREFIX + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_data_url(url: str) -> Image.Image:
    """A ``data:image/...;base64,`` URL → RGB PIL image (ValueError for anything else)."""
    if not url.startswith("data:image/") or ";base64," not in url:
        raise ValueError("only base64 image data URLs are accepted")
    raw = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    return Image.open(io.BytesIO(raw)).convert("RGB")


_MEMO_SIZE = 256


def to_openai(messages: list[dict], max_pixels: int, encoded: dict | None = None) -> list[dict]:
    """kbridge messages (image parts carry PIL images) → OpenAI chat messages.

    ``encoded`` memoises data URLs by image object, so an image that appears in several requests
    (a chain's turns, the turn-3 re-attachment) is encoded once per process."""
    memo = {} if encoded is None else encoded
    out = []
    for m in messages:
        parts = []
        for p in m["content"]:
            if p["type"] == "image":
                key = id(p["image"])
                if key not in memo:
                    # the image is kept alive with its URL, so its id cannot be reused meanwhile
                    memo[key] = (p["image"], image_data_url(p["image"], max_pixels))
                    while len(memo) > _MEMO_SIZE:
                        memo.pop(next(iter(memo)))
                parts.append({"type": "image_url", "image_url": {"url": memo[key][1]}})
            else:
                parts.append({"type": "text", "text": p["text"]})
        out.append({"role": m["role"], "content": parts})
    return out


def from_openai(messages: list[dict]) -> list[dict]:
    """OpenAI chat messages → kbridge messages (string content becomes one text part)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        else:
            parts = []
            for p in content or []:
                if p.get("type") == "image_url":
                    parts.append({"type": "image", "image": decode_data_url(p["image_url"]["url"])})
                elif p.get("type") == "text":
                    parts.append({"type": "text", "text": p["text"]})
                else:
                    raise ValueError(f"unsupported content part {p.get('type')!r}")
        out.append({"role": m["role"], "content": parts})
    return out


def response_format(schema: dict | None) -> dict | None:
    """The ``response_format`` of a schema request (vLLM compiles it to a grammar)."""
    if schema is None:
        return None
    return {"type": "json_schema", "json_schema": {"name": "kbridge_answer", "schema": schema, "strict": True}}
