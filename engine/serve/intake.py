"""Intake of ``kbridge serve``: a request body (JSON or multipart) read under its size cap and
deadline, parsed and checked against every [serve] limit — texts in LMM tokens, images fully
decoded — into a Sample, its overrides and its estimated cost. Every refusal is a ``BadRequest``
naming the limit or field (the HTTP layer turns it into the one error shape)."""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from typing import Literal

from fastapi import Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kbridge.engine.serve.jobs import BadRequest, Overrides, Service, content_id, sample_index
from kbridge.engine.types import Sample


def short_name(s: str, n: int = 64) -> str:
    """A client-given name in a message: quoted, printable, cut (never a repr)."""
    s = "".join(c if c.isprintable() else "?" for c in s[:n])
    return f'"{s}"' + ("…" if len(s) >= n else "")


class CompleteRequest(BaseModel):
    """One incomplete sample: the available modality, and what is missing."""

    model_config = ConfigDict(extra="forbid")
    missing: Literal["image", "text"]
    text: str | None = Field(None, description="The available text (when the image is missing).")
    image: str | None = Field(None, description="The available image, base64 PNG/JPEG (when the text is missing); "
                              "a multipart upload field 'image' works too.")
    sample_id: str | None = Field(None, max_length=256, description="Seeds derive from it, as in a run; default: "
                                  "a hash of the content, so the same request gives the same answer.")
    candidates: int | None = Field(None, ge=1, strict=True, description="Candidates (at most [serve] max_candidates).")
    seed: int | None = Field(None, ge=0, lt=2**63, strict=True, description="Root seed (default: the profile's "
                             "run.seed).")
    steps: int | None = Field(None, ge=1, strict=True, description="Denoising steps (at most [serve] max_steps).")
    images: Literal["inline", "url"] = Field("inline", description="Generated images as base64 PNG data URIs, "
                                             "or as URLs under /v1/files/ kept for [serve] files_ttl_s.")


BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": CompleteRequest.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "image": {"type": "string", "format": "binary"}, "missing": {"type": "string", "enum": ["text", "image"]},
        "text": {"type": "string"}, "sample_id": {"type": "string"}, "candidates": {"type": "integer"},
        "seed": {"type": "integer"}, "steps": {"type": "integer"},
        "images": {"type": "string", "enum": ["inline", "url"]}}, "required": ["missing"]}}}}}


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes (Content-Length or streamed),
    and dropped (408) when it is not all in ``timeout`` seconds after the headers (a stalled upload)."""
    n = request.headers.get("content-length")
    if n is not None and n.isdigit() and int(n) > limit:
        raise BadRequest(f"request body of {int(n)} bytes is over the limit of {limit} bytes (max_body_mb)", 413,
                         "max_body_mb")
    chunks, size = [], 0

    async def receive():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(f"request body is over the limit of {limit} bytes (max_body_mb)", 413, "max_body_mb")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), timeout)
    except asyncio.TimeoutError:
        raise BadRequest(f"request body not received within {timeout:g} s (body_timeout_s)", 408,
                         "body_timeout_s") from None
    body = b"".join(chunks)
    request._body = body  # starlette re-reads a consumed body from here (form parsing)
    return body


def decode_image(data: bytes, max_pixels: int, max_aspect: float = float("inf")):
    """Fully decoded and checked here, at intake: a corrupt or truncated file, an image over the
    pixel limit or absurdly elongated is refused with the reason (never a 500 later)."""
    from kbridge.engine.data import normalize_image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in ("PNG", "JPEG"):
                raise BadRequest(f"image: {im.format or 'unknown'} is not accepted (PNG or JPEG)", 400, "image")
            w, h = im.size
            if w * h > max_pixels:
                raise BadRequest(f"image of {w}x{h} pixels is over the limit of {max_pixels} (max_image_pixels)",
                                 413, "max_image_pixels")
            if min(w, h) < 1 or max(w, h) / min(w, h) > max_aspect:
                raise BadRequest(f"image of {w}x{h} pixels is more elongated than {max_aspect:g}:1 "
                                 "(max_aspect_ratio)", 400, "max_aspect_ratio")
            im.load()
            return normalize_image(im)
    except BadRequest:
        raise
    except Image.DecompressionBombError:
        raise BadRequest("image is over the pixel limit (max_image_pixels)", 413, "max_image_pixels") from None
    except Exception as e:  # noqa: BLE001 — any decoder failure is the upload's fault
        raise BadRequest(f"image is not a readable PNG/JPEG: {_plain(e)}", 400, "image") from None


def _plain(e: BaseException) -> str:
    """An exception as one plain line (no reprs or addresses)."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return msg if " at 0x" not in msg else type(e).__name__


_INTS = ("candidates", "seed", "steps")


def _check_text(name: str, value: str) -> None:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise BadRequest(f"{name}: contains a lone surrogate (not valid Unicode text)", 400, name)


async def parse(request: Request, svc: Service) -> tuple[Sample, Overrides, str, dict]:
    """The request as a Sample and its overrides, checked against every [serve] limit; also its
    estimated cost (UNet evaluations, prompt tokens) for admission."""
    lim = svc.limits
    body = await read_body(request, int(lim.max_body_mb * 1024 * 1024), lim.body_timeout_s)
    ctype = request.headers.get("content-type", "")
    upload = None
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_part_size=len(body) + 1)
        except Exception as e:  # noqa: BLE001 — a malformed multipart body
            raise BadRequest(f"malformed multipart body: {_plain(e)}", 400, "body") from None
        fields = {}
        for k, v in form.multi_items():
            if k in fields or (k == "image" and upload is not None):
                raise BadRequest(f"field {short_name(k)} given twice", 400, k if k.isidentifier() else "body")
            if k == "image" and hasattr(v, "read"):
                upload = await v.read()
            elif k in _INTS and isinstance(v, str) and v.strip().isdigit():
                fields[k] = int(v)
            else:
                fields[k] = v
    else:
        try:
            fields = json.loads(body)
        except RecursionError:
            raise BadRequest("malformed JSON: nested too deeply", 400, "body") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"malformed JSON: {_plain(e)}", 400, "body") from None
        if not isinstance(fields, dict):
            raise BadRequest("the body must be a JSON object", 400, "body")
    try:
        req = CompleteRequest.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(map(str, first["loc"])) or "body"
        raise BadRequest("; ".join(f"{'.'.join(map(str, x['loc'])) or 'body'}: {x['msg']}" for x in e.errors()),
                         422, loc if loc.isidentifier() else "body") from None
    for name in ("text", "sample_id"):
        if getattr(req, name) is not None:
            _check_text(name, getattr(req, name))
    if req.sample_id is not None and (not req.sample_id.strip() or not req.sample_id.isprintable()):
        raise BadRequest("sample_id: must be printable text (no control characters)", 422, "sample_id")
    if req.image is not None:
        if upload is not None:
            raise BadRequest("image given twice (a JSON field and an upload)", 400, "image")
        raw = req.image.split(",", 1)[-1] if req.image.startswith("data:") else req.image
        raw = "".join(raw.split())  # wrapped base64 (line breaks, MIME style) is accepted
        try:
            upload = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as e:
            raise BadRequest(f"image: not valid base64 ({_plain(e)})", 400, "image") from None
    tokens = 0
    if req.missing == "image":
        if not req.text or not req.text.strip():
            raise BadRequest("missing=image needs the available text in 'text'", 400, "text")
        if upload is not None:
            raise BadRequest("missing=image: send the text only (the image is what is missing)", 400, "image")
        if len(req.text) > lim.max_text_chars:
            raise BadRequest(f"text of {len(req.text)} characters is over the limit of {lim.max_text_chars} "
                             "(max_text_chars)", 413, "max_text_chars")
        tokens = await asyncio.to_thread(svc.count_tokens, req.text)
        if tokens > lim.max_text_tokens:
            raise BadRequest(f"text of {tokens} tokens is over the limit of {lim.max_text_tokens} (max_text_tokens)",
                             413, "max_text_tokens")
        text, image = req.text.strip(), None
    else:
        if upload is None:
            raise BadRequest("missing=text needs the available image ('image' base64 or a multipart upload)",
                             400, "image")
        if req.text is not None:
            raise BadRequest("missing=text: send the image only (the text is what is missing)", 400, "text")
        text, image = None, await asyncio.to_thread(decode_image, upload, lim.max_image_pixels, lim.max_aspect_ratio)
    sid = req.sample_id or content_id(req.missing, text, upload)
    return (Sample(sid, sample_index(sid), text, image, req.missing), Overrides(req.candidates, req.seed, req.steps),
            req.images, {"prompt_tokens": tokens})
