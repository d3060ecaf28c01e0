"""The real server dies mid-run (SIGKILL of vLLM's processes, as an OOM kill would): the run stops
admitting samples, every sample in flight gets one error line naming it (and only those samples
send requests after the death), what was written stays, ``kbridge run`` exits 3 as documented,
and a re-run against a restarted server resumes and completes every sample exactly once. Then
``kbridge lmm serve`` stops cleanly on SIGTERM (exit 0, no vLLM process left)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.helpers import promise
from tests.helpers.jsonl import read_jsonl
from tests.vllm.vllm_helpers import LMMServer

pytestmark = pytest.mark.vllm


def _lines(path):
    return read_jsonl(path) if path.exists() else []


def test_server_killed_mid_run_then_rerun_resumes(lmm_server, tmp_path):
    """Runs last (file order): it kills the session's server."""
    server = lmm_server
    url = server.url
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    out = tmp_path / "run"
    conf = tmp_path / "two.toml"  # two samples in flight: the other six wait for admission
    conf.write_text("[run]\nrows_in_flight = 2\n")
    argv = [sys.executable, "-m", "kbridge.cli", "run", "--lmm", url, "--out", str(out), "--config", str(conf)]
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not _lines(out / "results.jsonl") and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, ("the run ended before the server could be killed", run.communicate()[1][-2000:])
    for p in server.tree():  # vLLM's API server, engine core and worker
        p.kill()
    server.proc.wait(60)
    stdout, stderr = run.communicate(timeout=600)
    err_lines = stderr.decode().splitlines()
    assert run.returncode == 3, stderr.decode()[-2000:]  # documented: the LMM engine died, re-run resumes
    done = {r["sample_id"] for r in _lines(out / "results.jsonl")}
    errors = _lines(out / "errors.jsonl")
    failed = {e["sample_id"] for e in errors}
    assert len(errors) == len(failed) and not failed & done, errors
    assert 1 <= len(failed) <= 2, errors  # only the samples in flight failed (rows_in_flight = 2)
    assert len(done) + len(failed) < 8, (done, failed)  # the rest were never started
    assert all("LMM server" in e["error"] for e in errors), errors
    for sid in failed:  # one clear line per failed sample on stderr
        assert sum(sid + ":" in ln and "LMM server" in ln for ln in err_lines) == 1, (sid, err_lines[-20:])
    # every request retried after the death belongs to a sample in flight then
    retried = {ln.split("warning: ", 1)[1].split(": ", 1)[0] for ln in err_lines if "retry" in ln and "warning:" in ln}
    assert retried <= failed, (retried, failed)
    stop = [ln for ln in err_lines if "the run stopped: the LMM engine died" in ln]
    assert len(stop) == 1 and f"{8 - len(done) - len(failed)} samples were not started" in stop[0], err_lines[-5:]

    again = LMMServer(port=port, log=tmp_path / "server-2.log")
    try:
        assert again.wait() == url
        rerun = subprocess.run(argv, capture_output=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
        rows = promise.rows(out)  # fails if a sample was written twice
        assert set(rows) >= done | failed and len(rows) == 8
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["config_hash"]
    finally:
        tree = again.tree()
        code = again.stop()
    assert code == 0
    assert not [p for p in tree if p.is_running() and p.status() != "zombie"], tree
