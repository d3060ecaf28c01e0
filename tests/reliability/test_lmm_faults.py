"""LMM faults over loopback HTTP (the fake LMM behind tests/helpers/openai_server.py): each fault is
retried as configured — transport faults by the HTTP backend (``lmm.retries``), unusable answers
by the client (``LMMClient.retries``, another seed each time) — then becomes that request's error,
which fails its sample; never a crash, never a hang past the timeouts."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from kbridge.engine.config import build_config
from kbridge.engine.lmm import LMMClient, Request, RequestLog
from kbridge.engine.domains.general import prompts as P
from kbridge.engine.domains.general import schemas as S
from kbridge.engine.lmm.vllm_http import HTTPBackend

RETRIES = 2  # both layers: 3 attempts in all
# fault → (Faults field, the error a persistent one ends in)
FAULTS = {
    "invalid JSON": ("malformed_next", "invalid JSON answer"),
    "JSON violating the schema": ("off_schema_next", "does not match the schema"),
    "empty answer": ("empty_next", "invalid JSON answer"),
    "dropped connection mid-response": ("cut_next", "LMM server:"),
    "429 burst": ("too_many_next", "HTTP 429"),
}


def _client(url: str, timeout_s: float = 30.0) -> LMMClient:
    cfg = build_config("tiny", overrides={"lmm": {"backend": "http", "url": url, "retries": RETRIES,
                                                  "backoff_s": 0.01, "timeout_s": timeout_s}})
    return LMMClient(HTTPBackend(cfg.lmm), RequestLog(), None, retries=RETRIES), cfg


def _ask(client, cfg):
    k = cfg.knowledge
    req = Request(P.chain_compress(k, "a red cup on a table"), S.prompt(k), 11, 64, 0.7, "s0", "generate", 1)
    # a hang guard, not a timing check: every path below ends long before it
    return asyncio.run(asyncio.wait_for(client.complete([req]), 120))[0]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_transient_lmm_fault_is_retried_and_recovers(server, fault):
    field, _ = FAULTS[fault]
    setattr(server.faults, field, RETRIES)  # fails every attempt but the last
    resp = _ask(*_client(server.url))
    assert resp.error is None and set(resp.parsed) == {"prompt"}
    assert len(server.bodies) == RETRIES + 1


@pytest.mark.parametrize("fault", list(FAULTS) + ["timeout"])
def test_a_persistent_lmm_fault_becomes_the_requests_error(server, fault):
    if fault == "timeout":
        server.faults.delay_s = 1.0
        client, cfg = _client(server.url, timeout_s=0.2)
        says = "timed out after 0.2 s"
    else:
        field, says = FAULTS[fault]
        setattr(server.faults, field, 100)
        client, cfg = _client(server.url)
    resp = _ask(client, cfg)
    assert resp.error and says in resp.error and resp.parsed is None, resp.error
    assert len(server.bodies) == RETRIES + 1  # retried exactly as configured, then given up


def test_a_run_whose_lmm_answers_are_all_unusable_fails_each_sample_and_goes_on(server, dense, tmp_path):
    from kbridge.engine.api import Engine

    server.faults.malformed_next = 10_000
    run_cfg = build_config("tiny", overrides={"lmm": {"backend": "http", "url": server.url, "retries": 0,
                                                      "backoff_s": 0.01}})
    eng = Engine(dataclasses.replace(run_cfg, generation=dataclasses.replace(run_cfg.generation, candidates=2)))
    eng.loaders.update(scorer=lambda _: dense.scorer, generators=lambda _: dense.generators)
    rep = eng.run(out=tmp_path / "o", limit=4)
    assert rep.completed == 0 and len(rep.errors) == 4
    assert all("invalid JSON answer" in e["error"] for e in rep.errors), rep.errors
