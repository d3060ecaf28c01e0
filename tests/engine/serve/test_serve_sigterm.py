"""SIGTERM stops admission, lets admitted work finish (a waiting request gets its 200, a job
completes), and the process exits 0."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx2 as httpx
import pytest

from tests.engine.serve.serve_helpers import free_port
from tests.helpers import ROOT



def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1.0


def _start(*args: str) -> tuple[subprocess.Popen, str]:
    """serve_main.py in a subprocess on a free port, once /health says 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-m", "tests.engine.serve.serve_main", str(port), *args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.time() + 180
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return p, url
        except httpx.HTTPError:
            pass
        if p.poll() is not None or time.time() > end:
            p.kill()
            raise AssertionError(f"server did not become ready: {p.stderr.read()}")
        time.sleep(0.05)


@pytest.mark.slow  # a subprocess: imports torch and loads the tiny dense models again
def test_sigterm_drains_and_exits_0(engine):  # engine: the tiny twins are built (cached) before the subprocess starts
    p, url = _start()
    try:
        end = time.time() + 180
        job = httpx.post(f"{url}/v1/jobs", json={"text": "a cat", "missing": "image", "sample_id": "slow:1"})
        assert job.status_code == 202
        answer = {}
        t = threading.Thread(target=lambda: answer.update(r=httpx.post(
            f"{url}/v1/complete", json={"text": "a dog", "missing": "image", "sample_id": "slow:2"}, timeout=120)))
        t.start()
        while _metric(url, "kbridge_requests_active") < 2:
            assert time.time() < end
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)
        t.join(120)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert answer["r"].status_code == 200 and answer["r"].json()["best"]
    assert p.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"slow:1": "done", "slow:2": "done"}
    try:  # admission stopped: nothing listens any more
        httpx.get(f"{url}/health", timeout=2)
        raise AssertionError("still listening after SIGTERM")
    except httpx.ConnectError:
        pass


@pytest.mark.slow  # a subprocess, as above
def test_sigterm_with_a_wedged_request_exits_after_the_drain_deadline(engine):
    """A request whose LMM call blocks a thread for good: during the drain /health says 503
    "draining" (still listening), and the process exits by the deadline anyway."""
    drain = 3.0
    p, url = _start(str(drain))
    try:
        end = time.time() + 180
        assert httpx.post(f"{url}/v1/jobs", json={"text": "a cat", "missing": "image",
                                                   "sample_id": "hang:1"}).status_code == 202
        while _metric(url, "kbridge_requests_active") < 1:
            assert time.time() < end
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)
        t0 = time.time()
        h = httpx.get(f"{url}/health", timeout=5)  # still listening while it drains
        assert h.status_code == 503 and h.json()["reason"] == "draining"
        r = httpx.post(f"{url}/v1/jobs", json={"text": "a dog", "missing": "image"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        p.wait(timeout=drain + 60)
        waited = time.time() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode in (0, 1), p.stderr.read()
    assert waited >= drain  # it waited for the admitted work until the deadline, then left
