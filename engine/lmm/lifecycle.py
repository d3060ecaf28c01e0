"""``kbridge run`` owning the LMM server for a phased profile (``lmm.manage_server``).

A ``vllm serve`` keeps ``gpu_memory_utilization`` × every one of its GPUs until it exits (0.95 of
four 24 GB cards for the 72B), so SDXL cannot load beside it in the render phase. With
``manage_server`` the LMM slot holds a ``ServedBackend``: loading it starts the profile's ``vllm
serve`` (engine/lmm/serving.py) and waits until healthy; the phased executor's release (which calls
``close()``) stops it — SIGTERM to its process group, SIGKILL after ``stop_s`` — before the render
phase loads SDXL, and the candidate-knowledge phase starts it again. (vLLM's sleep mode would keep
the process, but its HTTP endpoints exist only under ``VLLM_SERVER_DEV_MODE`` and level 1 keeps the
weights in host memory: 78 GB for the 72B.)
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
from urllib.parse import urlparse

from kbridge.engine.config import PipelineConfig
from kbridge.engine.lmm.serving import SERVE_PROFILES, ServeError, serve_command, wait_healthy

log = logging.getLogger(__name__)


class ManagedServer:
    """One ``vllm serve`` started for this run; ``close()`` stops it and waits for it to exit."""

    def __init__(self, cfg: PipelineConfig, model: str, vllm_bin: str | None = None, wait_s: float = 1800.0,
                 stop_s: float = 120.0):
        import httpx2 as httpx

        if cfg.profile not in SERVE_PROFILES:
            raise ServeError(f"lmm.manage_server needs a serving profile (one of {', '.join(SERVE_PROFILES)}), "
                             f"not {cfg.profile!r}")
        u = urlparse(cfg.lmm.url)
        host, port = u.hostname or "127.0.0.1", u.port or SERVE_PROFILES[cfg.profile].port
        self.base, self.stop_s = f"{u.scheme or 'http'}://{host}:{port}", stop_s
        try:
            if httpx.get(f"{self.base}/health", timeout=2.0).status_code == 200:
                raise ServeError(f"a server already answers at {self.base}: stop it first (with lmm.manage_server "
                                 "kbridge run starts and stops its own for each LMM phase)")
        except httpx.HTTPError:
            pass
        argv, env = serve_command(SERVE_PROFILES[cfg.profile], model, host, port, cfg.lmm.api_key_env,
                                  vllm_bin or os.environ.get("KBRIDGE_VLLM_BIN", "vllm"))
        log.info("starting the LMM server: %s", " ".join(argv))
        try:  # its own process group: stopping it stops vLLM's engine-core and worker processes too
            self.proc = subprocess.Popen(argv, env={**os.environ, **env}, start_new_session=True)
        except OSError as e:
            raise ServeError(f"cannot start {argv[0]}: {e} (pip install 'kbridge[vllm]')") from e
        atexit.register(self.close)  # never left running after the run's process ends
        try:
            wait_healthy(self.base, self.proc, wait_s)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.proc.poll() is not None:
            return
        log.info("stopping the LMM server at %s", self.base)
        for sig, wait in ((signal.SIGTERM, self.stop_s), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class ServedBackend:
    """The HTTP backend and the server behind it: ``close()`` stops the server (its GPUs are free)."""

    continuous_batching = True  # the server's: each row's requests go out on their own

    def __init__(self, cfg: PipelineConfig, model: str, **server_kw):
        from kbridge.engine.lmm.vllm_http import HTTPBackend

        self.server = ManagedServer(cfg, model, **server_kw)
        try:
            self.http = HTTPBackend(cfg.lmm)
        except BaseException:
            self.server.close()
            raise
        self.model_id = self.http.model_id

    @property
    def dead(self) -> str | None:
        return self.http.dead

    async def generate(self, requests):
        return await self.http.generate(requests)

    def close(self) -> None:
        self.server.close()
