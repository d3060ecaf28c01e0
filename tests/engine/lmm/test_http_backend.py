"""The LMM over real HTTP on loopback: the OpenAI-compatible test server serving the tiny hf backend.

The whole pipeline over HTTP gives the in-process results (per-request seeded decoding: an answer
depends on its request and seed only); faults (server down, killed mid-run, slow, 5xx, malformed
answers) end as retries, per-sample errors or one clear line, never as a crash.
"""
import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import promise
from tests.helpers.jsonl import read_jsonl
from kbridge.engine.lmm import LMMClient, Request, RequestLog
from kbridge.engine.domains.general import prompts as P
from kbridge.engine.domains.general import schemas as S
from kbridge.engine.lmm.openai_format import decode_data_url, downscale
from kbridge.engine.lmm.vllm_http import HTTPBackend, LMMUnavailable
from tests.helpers.openai_server import LMMServer

pytestmark = pytest.mark.http
KB = [sys.executable, "-m", "kbridge.cli"]


@pytest.fixture(scope="module")
def hf(engine):
    return engine.models().lmm


@pytest.fixture(scope="module")
def server(hf):
    with LMMServer(hf) as s:
        yield s


@pytest.fixture(autouse=True)
def _healthy(request):
    """Each test starts with no faults injected."""
    if "server" in request.fixturenames:
        s = request.getfixturevalue("server")
        s.faults = type(s.faults)()
    yield


@pytest.fixture(scope="module")
def image():
    from kbridge.engine.data import DEMO_DIR, load_image

    return load_image(DEMO_DIR / "images" / "coffee.jpg")


def _lmm(cfg, url, **kw):
    return dataclasses.replace(cfg.lmm, backend="http", url=url, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reqs(cfg, image, n=3):
    k = cfg.knowledge
    out = [Request(P.knowledge_fast(k, None, image), S.knowledge(k), 100 + i, cfg.lmm.max_new_tokens, 0.7, f"s{i}",
                   "extract", 1) for i in range(n)]
    out.append(Request(P.chain_describe(k, "a red cup on a table", None), None, 7, 24, 0.7, "t", "extract", 1))
    return out


def _cheap(cfg, n=1):
    """Short schema-bounded requests, for tests where the answer's content does not matter."""
    k = cfg.knowledge
    return [Request(P.chain_compress(k, f"a red cup number {i} on a table"), S.prompt(k), 50 + i, 64, 0.7, f"c{i}",
                    "generate", 1) for i in range(n)]


def test_http_answers_equal_in_process_and_carry_seed_and_schema(cfg, hf, server, image):
    reqs = _reqs(cfg, image, 2)
    local = asyncio.run(LMMClient(hf, RequestLog()).complete(reqs))
    log = RequestLog()
    remote = asyncio.run(LMMClient(HTTPBackend(_lmm(cfg, server.url)), log).complete(reqs))
    assert [r.text for r in remote] == [r.text for r in local]
    assert [(r.prompt_tokens, r.generated_tokens) for r in remote] == [(r.prompt_tokens, r.generated_tokens)
                                                                       for r in local]
    assert all(r.error is None for r in remote) and remote[0].parsed == local[0].parsed
    assert log.totals()["prompt_tokens"] == sum(r.prompt_tokens for r in local)  # from the response's usage
    bodies = server.bodies[-len(reqs):]
    by_seed = {b["seed"]: b for b in bodies}
    assert set(by_seed) == {r.seed for r in reqs}
    b0 = by_seed[100]
    assert b0["response_format"]["type"] == "json_schema"
    assert b0["response_format"]["json_schema"]["schema"] == reqs[0].schema
    assert "response_format" not in by_seed[7] and by_seed[7]["max_tokens"] == 24
    # system prompt and instructions first, the sample's image last (prefix-cache friendly)
    parts = b0["messages"][-1]["content"]
    assert b0["messages"][0]["role"] == "system" and parts[-1]["type"] == "image_url"
    assert decode_data_url(parts[-1]["image_url"]["url"]).tobytes() == image.tobytes()  # lossless


def test_images_are_downscaled_to_max_pixels(cfg, server, image):
    small = downscale(image, 64 * 64)
    assert small.size[0] * small.size[1] <= 64 * 64
    assert abs(small.size[0] / small.size[1] - image.size[0] / image.size[1]) < 0.05
    be = HTTPBackend(_lmm(cfg, server.url, http_max_pixels=64 * 64))
    url = be.body(_reqs(cfg, image, 1)[0])["messages"][-1]["content"][-1]["image_url"]["url"]
    assert decode_data_url(url).size == small.size


def test_many_requests_in_flight_are_batched_by_the_server(cfg, server, image):
    reqs = _cheap(cfg, 8)
    n0 = len(server.batches)
    out = asyncio.run(HTTPBackend(_lmm(cfg, server.url, concurrency=8)).generate(reqs))
    assert all(g.error is None for g in out)
    assert max(server.batches[n0:]) > 1  # requests were in flight together


def test_5xx_is_retried_then_succeeds(cfg, server, image):
    server.faults.fail_next = 2
    n0 = len(server.bodies)
    out = asyncio.run(HTTPBackend(_lmm(cfg, server.url, retries=2, backoff_s=0.01)).generate(_cheap(cfg)))
    assert out[0].error is None and out[0].generated_tokens > 0
    assert len(server.bodies) - n0 == 3


def test_5xx_past_retries_is_a_per_request_error(cfg, server, image):
    server.faults.fail_next = 10
    be = HTTPBackend(_lmm(cfg, server.url, retries=1, backoff_s=0.01))
    r = asyncio.run(LMMClient(be, RequestLog()).complete(_cheap(cfg)))[0]
    assert r.error and "HTTP 500" in r.error and "2 attempts" in r.error and r.parsed is None


def test_slow_answers_time_out_then_fail_that_request(cfg, server, image):
    server.faults.delay_s = 1.0
    be = HTTPBackend(_lmm(cfg, server.url, timeout_s=0.2, retries=1, backoff_s=0.01))
    r = asyncio.run(LMMClient(be, RequestLog()).complete(_cheap(cfg)))[0]
    assert r.error and "timed out" in r.error


def test_malformed_json_is_retried_with_another_seed(cfg, server, image):
    server.faults.malformed_next = 1
    be = HTTPBackend(_lmm(cfg, server.url))
    log = RequestLog()
    req = _cheap(cfg)[0]
    r = asyncio.run(LMMClient(be, log, retries=2).complete([req]))[0]
    assert r.error is None and isinstance(r.parsed, dict)
    assert log.totals()["lmm_calls"] == 2
    assert [b["seed"] for b in server.bodies[-2:]] == [req.seed, req.seed + 7919]
    server.faults.malformed_next = 5
    r = asyncio.run(LMMClient(be, RequestLog(), retries=1).complete([req]))[0]
    assert r.error and "invalid JSON" in r.error


def test_server_down_at_start_is_a_typed_error(cfg):
    with pytest.raises(LMMUnavailable, match="cannot reach the LMM server"):
        HTTPBackend(_lmm(cfg, f"http://127.0.0.1:{_free_port()}/v1"))


def test_cli_server_down_is_one_clear_line(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    r = subprocess.run([*KB, "run", "--lmm", url, "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the LMM server at " + url), r.stderr


def _rows(path):
    return {r["sample_id"]: r for r in read_jsonl(path / "results.jsonl")}


@pytest.mark.slow  # a kbridge run in a subprocess
def test_cli_run_over_http_equals_in_process(demo_run, server, tmp_path):
    out = tmp_path / "o"
    # one torch thread in the client: the LMM decodes in this process, and two processes spinning
    # two OpenMP threads each on a small machine slow both down many times over
    r = subprocess.run([*KB, "run", "--lmm", server.url, "--out", str(out), "--limit", "4"], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    remote = _rows(out)
    assert sorted(remote) == ["demo:0", "demo:2", "demo:3", "demo:4"]  # 2 image-missing, 2 text-missing
    man = json.loads((out / "manifest.json").read_text())
    local_man = json.loads((demo_run[0] / "manifest.json").read_text())
    assert man["config"]["lmm"]["backend"] == "http" and man["threads"] == 1
    # the client ran with 1 thread, the in-process reference with torch's default: the determinism
    # promise's cross-setting rule applies (exact equality only when the thread counts match)
    compare = promise.same_settings if man["threads"] == local_man["threads"] else promise.cross_settings
    compare(out, demo_run[0], only=set(remote))
    promise.cross_settings(out, demo_run[0], only=set(remote), counts=True)  # the same LMM work, counted


@pytest.mark.slow  # the LMM server killed mid-run, then a rerun
def test_server_killed_mid_run_then_rerun_completes(cfg, engine, demo_run, hf, tmp_path):
    from kbridge.engine.api import Engine
    from kbridge.engine.models import Models

    port = _free_port()
    run_cfg = dataclasses.replace(cfg, lmm=_lmm(cfg, f"http://127.0.0.1:{port}/v1", retries=1, backoff_s=0.01,
                                                timeout_s=600), run=dataclasses.replace(cfg.run, batch_size=2,
                                                                                       rows_in_flight=1))
    loaded = engine.models()

    def run_once():
        eng = Engine(run_cfg)
        eng._models = Models(HTTPBackend(run_cfg.lmm), loaded.scorer, loaded.generators)  # reuse the tiny models
        return eng.run(out=tmp_path / "o", limit=4)

    with LMMServer(hf, port=port) as s:
        # one sample at a time: demo:0 and demo:2 (image missing) take 1 extract + 4 parallel
        # prompt answers + 4 candidate-triple answers each; then the server dies: demo:3 (in flight)
        # fails, and the run stops admitting (demo:4 is never started; exit 3 from the CLI)
        n = cfg.generation.candidates
        s.faults.die_after = 2 * (1 + 2 * n)
        first = run_once()
    assert first.completed == 2 and len(first.errors) == 1 and "is gone" in first.stopped
    assert all("LMM server" in e["error"] for e in first.errors)
    errs = read_jsonl(tmp_path / "o" / "errors.jsonl")
    assert {e["sample_id"] for e in errs} == {e["sample_id"] for e in first.errors}
    with LMMServer(hf, port=port):
        second = run_once()
    assert not second.errors and second.skipped == first.completed
    assert second.completed == 2
    local, remote = _rows(demo_run[0]), _rows(tmp_path / "o")
    assert sorted(remote) == ["demo:0", "demo:2", "demo:3", "demo:4"]
    for sid in remote:  # answers cached by the first run are reused: knowledge and choice are identical
        assert remote[sid]["knowledge"] == local[sid]["knowledge"] and remote[sid]["best"] == local[sid]["best"]


def test_a_failed_free_text_turn_fails_its_sample(cfg):
    """Reference chain: a scene turn the server could not answer must not become an empty
    description that later turns build on."""
    from kbridge.engine.domains.general.write import write_prompts
    from kbridge.engine.lmm import Generation
    from kbridge.engine.types import Knowledge, Sample, SampleError

    class FirstTurnDown:
        model_id = "down"

        async def generate(self, reqs):
            return [Generation("", 0, 0, error="LMM server: down") if r.schema is None and r.turn == 5 else
                    Generation("a scene" if r.schema is None else '{"prompt": "a red cup on a table"}', 3, 3)
                    for r in reqs]

    ref = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, fidelity="reference"))
    s = Sample("demo:0", 0, "a red cup", None, "image")
    out = asyncio.run(write_prompts(LMMClient(FirstTurnDown(), RequestLog()), ref, [s], [Knowledge([], "", [])], 5))
    assert isinstance(out[0], SampleError) and "scene description turn 1" in out[0].message
