"""The ``[serve]`` configuration section: what one request may ask for and how much the service
holds at once. Each key is also a ``kbridge serve`` flag. Not part of the result hash."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    max_body_mb: float = 20.0
    """Largest request body (JSON or multipart) in MiB; larger bodies get 413."""
    max_image_pixels: int = 4096 * 4096
    """Largest uploaded image (width × height); larger get 413."""
    max_text_chars: int = 20_000
    """Longest input text; longer get 413."""
    max_candidates: int = 16
    """Most candidates a request may ask for (``candidates``; 422 above)."""
    max_steps: int = 100
    """Most denoising steps a request may ask for (``steps``; 422 above)."""
    max_queue: int = 64
    """Requests admitted and not yet finished; one more gets 429 with Retry-After."""
    request_timeout_s: float = 600.0
    """A synchronous request still unfinished after this gets 504 (its work is cancelled)."""
    files_ttl_s: float = 3600.0
    """How long generated images stay under /v1/files/… (``"images": "url"``) and jobs stay readable."""


def check(s: ServeConfig) -> None:
    from kbridge.engine.config import ConfigError

    if min(s.max_body_mb, s.max_image_pixels, s.max_text_chars, s.max_candidates, s.max_steps, s.max_queue,
           s.request_timeout_s, s.files_ttl_s) <= 0:
        raise ConfigError("every [serve] limit must be positive")
