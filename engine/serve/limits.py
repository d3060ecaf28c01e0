"""The checks of the ``[serve]`` configuration section (``config.ServeConfig``): what one request
may ask for and how much the service holds at once. Not part of the result hash."""
from __future__ import annotations

from kbridge.engine.config import ConfigError, ServeConfig


def check(s: ServeConfig) -> None:
    if min(s.max_body_mb, s.max_image_pixels, s.max_text_chars, s.max_text_tokens, s.max_candidates, s.max_steps,
           s.max_queue, s.max_request_unet_evals, s.max_queued_unet_evals, s.max_queued_prompt_tokens,
           s.request_timeout_s, s.files_ttl_s, s.files_max_mb, s.header_timeout_s, s.body_timeout_s, s.drain_timeout_s) <= 0 \
            or s.max_aspect_ratio < 1:
        raise ConfigError("every [serve] limit must be positive")
