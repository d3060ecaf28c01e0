"""``kbridge serve``: parse flags, build the engine, run the HTTP service (engine/serve/)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

LOOPBACK = "127.0.0.1"


def serve(
    profile: str = typer.Option("tiny", "--profile", "-p", help="tiny (CPU default), small, h100, 4090x4, edge."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1: loopback only)."),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file; its [serve] section sets the limits."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env",
                                              help="Environment variable holding the API key (Bearer token on /v1)."),
    lmm: Optional[str] = typer.Option(None, "--lmm", help="URL of an OpenAI-compatible LMM server (http backend)."),
    max_body_mb: Optional[float] = typer.Option(None, "--max-body-mb", help="[serve] max_body_mb (20)."),
    max_image_pixels: Optional[int] = typer.Option(None, "--max-image-pixels", help="[serve] max_image_pixels."),
    max_text_chars: Optional[int] = typer.Option(None, "--max-text-chars", help="[serve] max_text_chars."),
    max_candidates: Optional[int] = typer.Option(None, "--max-candidates", help="[serve] max_candidates."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="[serve] max_steps."),
    max_queue: Optional[int] = typer.Option(None, "--max-queue", help="[serve] max_queue (64): more get 429."),
    request_timeout_s: Optional[float] = typer.Option(None, "--request-timeout-s", help="[serve] request_timeout_s."),
    files_ttl_s: Optional[float] = typer.Option(None, "--files-ttl-s", help="[serve] files_ttl_s (3600)."),
    max_text_tokens: Optional[int] = typer.Option(None, "--max-text-tokens", help="[serve] max_text_tokens (2048)."),
    max_aspect_ratio: Optional[float] = typer.Option(None, "--max-aspect-ratio", help="[serve] max_aspect_ratio (20)."),
    max_request_unet_evals: Optional[int] = typer.Option(None, "--max-request-unet-evals",
                                                         help="[serve] max_request_unet_evals (3200)."),
    max_queued_unet_evals: Optional[int] = typer.Option(None, "--max-queued-unet-evals",
                                                        help="[serve] max_queued_unet_evals (50000)."),
    max_queued_prompt_tokens: Optional[int] = typer.Option(None, "--max-queued-prompt-tokens",
                                                           help="[serve] max_queued_prompt_tokens (200000)."),
    files_max_mb: Optional[float] = typer.Option(None, "--files-max-mb", help="[serve] files_max_mb (512)."),
    header_timeout_s: Optional[float] = typer.Option(None, "--header-timeout-s", help="[serve] header_timeout_s (10)."),
    body_timeout_s: Optional[float] = typer.Option(None, "--body-timeout-s", help="[serve] body_timeout_s (30)."),
    drain_timeout_s: Optional[float] = typer.Option(None, "--drain-timeout-s", help="[serve] drain_timeout_s (60)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Write every request's timeline to this trace file "
                                         "(e.g. serve-trace.json.gz; `kbridge profile DIR --trace FILE` reads it)."),
    trace_every: int = typer.Option(1, "--trace-every", min=1, help="Per-sample spans for every N-th request only."),
):
    """Serve the engine over HTTP: POST /v1/complete, /v1/jobs (+ SSE events), /metrics, /health."""
    from kbridge.cli.common import fail, line, load_config, setup_logging
    from kbridge.engine.config import ConfigError
    from kbridge.engine.errors import KbridgeError
    from kbridge.engine.serve.limits import check

    setup_logging(verbose)
    cfg = load_config(profile, config, lmm=dict(backend="http" if lmm else None, url=lmm),
                  serve=dict(max_body_mb=max_body_mb, max_image_pixels=max_image_pixels, max_text_chars=max_text_chars,
                             max_candidates=max_candidates, max_steps=max_steps, max_queue=max_queue,
                             request_timeout_s=request_timeout_s, files_ttl_s=files_ttl_s,
                             max_text_tokens=max_text_tokens, max_aspect_ratio=max_aspect_ratio,
                             max_request_unet_evals=max_request_unet_evals,
                             max_queued_unet_evals=max_queued_unet_evals,
                             max_queued_prompt_tokens=max_queued_prompt_tokens, files_max_mb=files_max_mb,
                             header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
                             drain_timeout_s=drain_timeout_s))
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env) or None
        if key is None:
            fail(f"--api-key-env {api_key_env}: the variable is not set or empty")
    bind = host or LOOPBACK
    if host is None:
        line("info", f"binding {LOOPBACK} only (loopback); pass --host to listen elsewhere")
    elif key is None and bind not in (LOOPBACK, "localhost", "::1"):
        line("warning", f"listening on {bind} without an API key: anyone who reaches it can use it")
    from kbridge.engine.api import Engine
    from kbridge.engine.serve.app import serve as run

    try:
        check(cfg.serve)
        from kbridge.engine.trace import TraceOptions

        topts = TraceOptions(trace, sample_every=trace_every) if trace else None
        run(Engine(cfg), bind, port, key, trace=topts,
            on_listen=lambda h, p: line("info", f"kbridge serve on http://{h}:{p} (profile {cfg.profile}; "
                                                 f"/health says 200 once the models are loaded; docs at /docs)"))
    except (KbridgeError, ConfigError) as e:
        fail(str(e))
