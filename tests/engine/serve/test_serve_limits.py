"""Limits in the units that cost, and each odd input's documented answer in the one error shape:
tokens of the LMM's tokenizer (413 naming max_text_tokens), images decoded at intake (corrupt,
truncated, elongated: 400), cost admission (422 over max_request_unet_evals, 429 with Retry-After
from the queued work), header and body deadlines, the file store's byte cap, and counts scoped to
the request when two requests share a sample id."""
from __future__ import annotations

import base64
import io
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
from PIL import Image

from tests.helpers.fake_lmm import FakeLMM
from tests.engine.serve.serve_helpers import running, serve_engine

TEXT = {"text": "a brown dog runs on green grass", "missing": "image"}


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _err(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    e = r.json()["error"]
    assert e["code"] == code, e
    return e["message"]


def test_odd_inputs_get_their_documented_answer(cfg, engine):
    # tokens are counted with the real tiny LMM's tokenizer
    with running(serve_engine(cfg, engine, None, max_text_tokens=100, max_image_pixels=256 * 256,
                              max_request_unet_evals=40)) as (url, svc):
        post = lambda **kw: httpx.post(f"{url}/v1/jobs", timeout=60, **kw)  # noqa: E731
        n = svc.count_tokens("🐕" * 30)
        assert n > 100 >= 30  # 30 characters, over 100 tokens: the limit is in tokens, not characters
        assert "max_text_tokens" in _err(post(json={**TEXT, "text": "🐕" * 30}), 413, "max_text_tokens")
        png = _png(32, 32)
        assert "max_aspect_ratio" in _err(post(json={"missing": "text", "image": base64.b64encode(_png(200, 4)).decode()}),
                                          400, "max_aspect_ratio")
        _err(post(json={"missing": "text", "image": base64.b64encode(png[:60]).decode()}), 400, "image")  # truncated
        bad_crc = png[:40] + bytes([png[40] ^ 0xFF]) + png[41:]
        _err(post(json={"missing": "text", "image": base64.b64encode(bad_crc).decode()}), 400, "image")
        gif = io.BytesIO()
        Image.new("RGB", (8, 8)).save(gif, format="GIF")
        _err(post(json={"missing": "text", "image": base64.b64encode(gif.getvalue()).decode()}), 400, "image")
        wrapped = "\n".join(base64.b64encode(png).decode()[i:i + 76] for i in range(0, 200, 76))
        wrapped += base64.b64encode(png).decode()[len(wrapped.replace("\n", "")):]
        assert post(json={"missing": "text", "image": wrapped}).status_code == 202  # MIME-wrapped base64 accepted
        _err(post(json={**TEXT, "candidates": True}), 422, "candidates")  # a boolean is not an integer
        _err(post(json={**TEXT, "steps": "2"}), 422, "steps")
        _err(post(content=b"[" * 100000 + b"]" * 100000, headers={"content-type": "application/json"}), 400, "body")
        _err(post(content=b'{"missing": "image", "text": "\\ud800x"}', headers={"content-type": "application/json"}),
             400, "text")
        _err(post(json={**TEXT, "sample_id": "a\x07b"}), 422, "sample_id")
        _err(post(files=[("image", ("a.png", png, "image/png")), ("image", ("b.png", png, "image/png"))],
                  data={"missing": "text"}), 400, "image")
        _err(httpx.get(f"{url}/v1/nowhere"), 404, "not_found")
        _err(httpx.put(f"{url}/v1/complete"), 405, "method_not_allowed")
        msg = _err(httpx.get(f"{url}/v1/jobs/" + "x" * 300), 404, "job")
        assert len(msg) < 150 and "'" not in msg
        # cost: 4 candidates × 6 steps × 2 (guidance) = 48 UNet evaluations > 40
        assert "48" in _err(post(json={**TEXT, "steps": 6}), 422, "max_request_unet_evals")
        # a stalled upload is answered 408 after body_timeout_s (set below), and a trickled header dropped
    with running(serve_engine(cfg, engine, FakeLMM(), body_timeout_s=1.0, header_timeout_s=1.0)) as (url, svc):
        host, port = url.rsplit("//", 1)[1].split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /v1/complete HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      b"content-length: 1000\r\n\r\n{\"text\":")
            s.settimeout(30)
            answer = _http_response(s)
        assert answer.startswith("HTTP/1.1 408") and '"code":"body_timeout_s"' in answer.replace(" ", "")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")  # and never the blank line
            s.settimeout(30)
            t0 = time.time()
            assert s.recv(65536) == b""  # closed by the server
            assert time.time() - t0 < 25
        assert httpx.get(f"{url}/health").status_code == 200
        r = httpx.get(f"{url}/metrics")
        assert 'kbridge_http_responses_total{code="408",route="/v1/complete"} 1.0' in r.text


def _http_response(s: socket.socket) -> str:
    """One whole HTTP response from the socket: the head, then ``content-length`` bytes of body
    (on a busy machine they may arrive in separate reads)."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        if sep and len(body) >= (int(length[1]) if length else 0):
            return data.decode()
        chunk = s.recv(65536)
        if not chunk:  # closed by the server
            return data.decode()
        data += chunk


def test_queued_cost_admission_and_retry_after(cfg, engine):
    slow = {f"slow:{i}" for i in range(3)}
    # each request: 4 candidates × 4 steps × 2 = 32 UNet evaluations; two fit under 70, the third does not
    with running(serve_engine(cfg, engine, FakeLMM(slow=slow, delay=2.0), max_queued_unet_evals=70)) as (url, svc):
        codes = [httpx.post(f"{url}/v1/jobs", json={**TEXT, "sample_id": f"slow:{i}"}) for i in range(3)]
        assert [r.status_code for r in codes] == [202, 202, 429]
        assert codes[2].json()["error"]["code"] == "max_queued_unet_evals"
        assert int(codes[2].headers["retry-after"]) >= 1
        assert svc.queued()["unet_evals"] == 64


def test_two_requests_with_one_sample_id_get_their_own_counts(cfg, engine):
    # a batching (non-continuous) LMM: both rows would be in one call without the executor's split
    with running(serve_engine(cfg, engine, FakeLMM(continuous=False), run={"batch_wait_ms": 200})) as (url, svc):
        alone = httpx.post(f"{url}/v1/complete", json={**TEXT, "sample_id": "solo:1"}, timeout=120).json()
        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(lambda _: httpx.post(f"{url}/v1/complete", json={**TEXT, "sample_id": "same:1"},
                                                 timeout=120).json(), range(2))
        for r in (a, b):
            assert "counts" in r, r
            assert r["counts"]["lmm_calls"] == alone["counts"]["lmm_calls"] > 0
            assert r["counts"]["prompt_tokens"] == alone["counts"]["prompt_tokens"]
        # finished jobs hold no decoded input
        assert all(j.sample.image is None and j.row.sample.image is None for j in svc.jobs.values())


def test_the_file_store_evicts_by_age_and_total_bytes(monkeypatch):
    from types import SimpleNamespace

    from kbridge.engine.serve import formats

    now = [1000.0]
    monkeypatch.setattr(formats, "time", SimpleNamespace(time=lambda: now[0]))
    f = formats.Files(ttl=60, max_bytes=250)
    for i in range(4):
        f.put(f"k{i}", bytes(100))
    assert list(f.items) == ["k2", "k3"] and f.bytes == 200 and f.get("k0") is None  # oldest over the cap went
    now[0] += 30
    f.put("k4", bytes(10))
    now[0] += 31  # k2 and k3 are 61 s old, k4 31 s
    f.evict()  # what the timer calls
    assert list(f.items) == ["k4"] and f.bytes == 10 and f.get("k4") == bytes(10)
