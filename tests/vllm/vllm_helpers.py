"""Helpers of the vLLM tests: an Engine over a given LMM backend, the real server as a subprocess."""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.engines import engine_with



def engine_on(cfg, engine, lmm, **run):
    """An Engine over the session's tiny dense models and the given LMM backend."""
    return engine_with(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **run)), engine, lmm)


class LMMServer:
    """``kbridge lmm serve -p tiny`` as a subprocess: its base URL, its vLLM process tree. ``otlp``:
    an OTLP/HTTP traces endpoint for vLLM's request spans (exported every 0.2 s, not every 5 s)."""

    def __init__(self, port: int | None = None, log: Path | None = None, otlp: str | None = None):
        argv = [sys.executable, "-m", "kbridge.cli", "lmm", "serve", "-p", "tiny"]
        if port:
            argv += ["--port", str(port)]
        if otlp:
            argv += ["--otlp-traces-endpoint", otlp]
        env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "200"}  # the protocol: kbridge lmm serve's default
        self.log = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, start_new_session=True, env=env)
        self.url = ""

    def wait(self, timeout: float = 600.0) -> str:
        """The ``/v1`` URL the command prints once the server is healthy."""
        deadline = time.monotonic() + timeout
        for raw in self.proc.stdout:  # blocks until a line; the command prints one when healthy
            m = re.search(r"LMM server healthy: (http://127\.0\.0\.1:\d+/v1)", raw.decode())
            if m:
                self.url = m.group(1)
                return self.url
            assert time.monotonic() < deadline
        raise AssertionError(f"kbridge lmm serve exited with {self.proc.wait()} before it was healthy")

    def tree(self):
        import psutil

        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> int:
        """SIGTERM, as a service manager would; the exit code of ``kbridge lmm serve``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            for p in self.tree():
                p.kill()
            self.proc.kill()
            return self.proc.wait()


