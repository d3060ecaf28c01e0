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
    """Longest input text in characters (a cheap first check); longer get 413."""
    max_text_tokens: int = 2048
    """Longest input text in tokens of the LMM's tokenizer (UTF-8 bytes when the tokenizer is remote:
    an upper bound for byte-level BPE); longer get 413."""
    max_aspect_ratio: float = 20.0
    """Most elongated uploaded image (long side / short side); more get 400."""
    max_candidates: int = 16
    """Most candidates a request may ask for (``candidates``; 422 above)."""
    max_steps: int = 100
    """Most denoising steps a request may ask for (``steps``; 422 above)."""
    max_queue: int = 64
    """Requests admitted and not yet finished; one more gets 429 with Retry-After."""
    max_request_unet_evals: int = 3200
    """Most UNet evaluations one request may cost (candidates × steps × 2 with guidance); 422 above."""
    max_queued_unet_evals: int = 50_000
    """Most UNet evaluations admitted and not finished, all requests together; 429 above (Retry-After:
    the queue's estimated drain time)."""
    max_queued_prompt_tokens: int = 200_000
    """Most input-text tokens admitted and not finished, all requests together; 429 above."""
    request_timeout_s: float = 600.0
    """A synchronous request still unfinished after this gets 504 (its work is cancelled)."""
    files_ttl_s: float = 3600.0
    """How long generated images stay under /v1/files/… (``"images": "url"``) and jobs stay readable."""
    files_max_mb: float = 512.0
    """Total size of the generated images kept for /v1/files/ in MiB; the oldest go first."""
    header_timeout_s: float = 10.0
    """Request headers not complete this long after a connection's first byte (or its previous
    answer): the connection is closed."""
    body_timeout_s: float = 30.0
    """A request body (JSON or upload) not fully received this long after the headers: 408, dropped."""
    drain_timeout_s: float = 60.0
    """After SIGTERM: admitted work may finish for this long (/health says 503 "draining"), then the
    rest is cancelled and the process exits, whatever is still running."""


def check(s: ServeConfig) -> None:
    from kbridge.engine.config import ConfigError

    if min(s.max_body_mb, s.max_image_pixels, s.max_text_chars, s.max_text_tokens, s.max_candidates, s.max_steps,
           s.max_queue, s.max_request_unet_evals, s.max_queued_unet_evals, s.max_queued_prompt_tokens,
           s.request_timeout_s, s.files_ttl_s, s.files_max_mb, s.header_timeout_s, s.body_timeout_s, s.drain_timeout_s) <= 0 \
            or s.max_aspect_ratio < 1:
        raise ConfigError("every [serve] limit must be positive")
