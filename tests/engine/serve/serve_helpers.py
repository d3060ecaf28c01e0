"""Test helpers: a loopback kbridge server in a background thread: the tiny dense models from the session's
engine, and a FakeLMM (or the real tiny LMM) behind the service."""
from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time

import httpx2 as httpx

from tests.helpers.engines import engine_with


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_engine(cfg, engine, lmm=None, run: dict | None = None, **limits):
    """An Engine on the session's loaded tiny models (``lmm``: a fake backend, or None for the real tiny twin)."""
    cfg = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, **limits),
                              run=dataclasses.replace(cfg.run, **(run or {})))
    return engine_with(cfg, engine, lmm)


@contextlib.contextmanager
def running(eng, api_key=None, ready=True):
    import uvicorn

    from kbridge.engine.serve.app import create_app, uvicorn_config
    from kbridge.engine.serve.jobs import Service
    from kbridge.engine.serve.metrics import Metrics

    svc = Service(eng, Metrics())
    port = free_port()
    server = uvicorn.Server(uvicorn_config(create_app(svc, api_key), "127.0.0.1", port, svc.limits))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            try:
                code = httpx.get(f"{url}/health", timeout=5).status_code
                if code == 200 or (code == 503 and not ready):
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not become ready"
            time.sleep(0.05)
        yield url, svc
    finally:
        server.should_exit = True
        t.join(60)

