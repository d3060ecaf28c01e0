"""``--executor ray`` when the LMM engine dies mid-run, as the local executor handles it
(tests/engine/executors/test_engine_death.py): the LMM actors stop starting rows, each row in
flight fails with its own line, the rows not started are left untouched, ``kbridge run`` prints
one line and exits 3, the manifest records it, and a re-run against a server that is back
completes every sample exactly once.

One test drives the operators themselves, called in this process (the death as the backend
reports it; the cluster is only there because an operator asks Ray for its GPUs); the other is the whole chain on the local Ray cluster with the HTTP backend in the
LMM actors, pointed at a real server process that is killed mid-run."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kbridge.engine.executors.ray import HELD, Spec, StageActor, encode, decode
from kbridge.engine.rows import Row
from kbridge.engine.types import Sample
from tests.helpers import ROOT, promise
from tests.helpers.fake_lmm import DyingLMM
from tests.helpers.jsonl import read_jsonl

pytestmark = pytest.mark.ray


def _batch(rows):
    return {"sample_id": np.array([r.sample_id for r in rows], dtype=object),
            "row": np.array([encode(r) for r in rows], dtype=object)}


def _rows(out):
    return [decode(b) for b in out["row"]]


def test_lmm_actors_start_no_row_once_the_engine_died(cfg, ray_cluster, tmp_path):
    from kbridge.engine.data import incomplete_indices, open_dataset

    ds = open_dataset()
    ids = [i for i in incomplete_indices(ds) if i in ds.missing]
    assert len(ids) >= 6
    lmm = DyingLMM(die_after=10 ** 6)
    spec = Spec(cfg, ds, str(tmp_path), {"lmm": lambda _: lmm})
    load, ask = StageActor(spec, ("load",)), StageActor(spec, ("extract", "write"))

    def through(idx):
        rows = [Row(Sample(f"{ds.name}:{i}", i, None, None, ds.missing.get(i))) for i in idx]
        return _rows(ask(load(_batch(rows))))

    first = through(ids[:2])
    assert all(r.error is None and "write" in {t[0] for t in r.timings} for r in first)  # a live engine
    lmm.die_after = lmm.calls + 1  # the next request is the last one answered
    second = through(ids[2:4])
    failed = [r for r in second if r.error is not None]
    assert failed and all("is gone" in r.error.message and r.error.stage in ("extract", "write") for r in failed)
    assert lmm.dead
    calls, refused = lmm.calls, list(lmm.refused)
    third = through(ids[4:6])  # after the death: held, no request
    assert [r.error.stage for r in third] == [HELD, HELD] and all("is gone" in r.error.message for r in third)
    assert lmm.calls == calls and lmm.refused == refused
    # a row in flight (it made LMM requests before) reaching an LMM stage now fails with its line
    inflight = first[0].replace(candidates=())
    again = _rows(ask(_batch([inflight])))[0]
    assert again.error.stage == "write" and again.error.message.startswith("the LMM engine died: ")
    assert lmm.refused == refused


def _server(port: int, log, kill_at: int | None = None) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "tests.engine.executors.ray.lmm_process", str(port), str(log)]
    proc = subprocess.Popen(argv + ([str(kill_at)] if kill_at else []), env=env, stdout=subprocess.PIPE,
                            start_new_session=True)
    url = proc.stdout.readline().decode().strip()
    assert url.startswith("http://127.0.0.1:"), url
    return proc, url


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _lines(path):
    return read_jsonl(path) if path.exists() else []


@pytest.mark.slow  # two kbridge run processes joining the test's Ray cluster
@pytest.mark.http
def test_ray_run_stops_admitting_when_the_lmm_server_is_killed_and_a_rerun_completes(ray_cluster, tmp_path):
    from kbridge.engine.lmm.serving import free_port

    port = free_port()
    out, log = tmp_path / "run", tmp_path / "requests.log"
    conf = tmp_path / "ray.toml"  # one sample per block; a failed request is retried once, quickly
    conf.write_text("[run]\nbatch_size = 1\nthreads = 1\n[lmm]\nretries = 1\nbackoff_s = 0.1\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def kbridge_run(url):
        argv = [sys.executable, "-m", "kbridge.cli", "run", "--executor", "ray", "--ray-address", ray_cluster,
                "--lmm", url, "--out", str(out), "--config", str(conf)]
        return subprocess.run(argv, env=env, capture_output=True, timeout=420)

    server, url = _server(port, log, kill_at=5)  # killed as its 5th request arrives
    try:
        first = kbridge_run(url)
        assert server.wait(5) == -signal.SIGKILL, "the server was never killed: the test did not test anything"
    finally:
        _stop(server)
    err = first.stderr.decode()
    assert first.returncode == 3, err[-3000:]  # documented: the LMM engine died, a re-run resumes
    received = len(log.read_text().splitlines())
    assert received == 5, received  # the requests it got before it was killed (the 5th killed it)
    done = {r["sample_id"] for r in _lines(out / "results.jsonl")}
    errors = _lines(out / "errors.jsonl")
    failed = {e["sample_id"] for e in errors}
    assert len(errors) == len(failed) and not failed & done, errors
    # no sample started after the death: a sample makes 1 extract request then 4 write requests in
    # the same LMM actor (one sample per block, 2 actors), so when the 5th request kills the server
    # at most the 2 samples in those actors have started; each failed with its line, none is done
    assert 1 <= len(failed) and len(done) + len(failed) <= 2, (done, errors)
    # the LMM client's line (the request that failed every retry) or, for a sample that reached its
    # next LMM stage after the death, the actor's
    assert all("LMM server: " in e["error"] or "the LMM engine died: " in e["error"] for e in errors), errors
    not_started = 8 - len(done) - len(failed)
    assert not_started >= 1, (done, failed)  # the rest never started: no result, no error line
    stop = [ln for ln in err.splitlines() if "the run stopped: the LMM engine died" in ln]
    assert len(stop) == 1 and f"{not_started} samples were not started" in stop[0], err[-3000:]
    man = json.loads((out / "manifest.json").read_text())
    assert "is gone" in man["totals"]["stopped_this_run"] and man["executor"] == "ray"

    server, url = _server(port, tmp_path / "requests2.log")  # back, on the same address
    try:
        again = kbridge_run(url)
    finally:
        _stop(server)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    rows = promise.rows(out)  # fails if a sample was written twice
    assert len(rows) == 8, sorted(rows)
    man = json.loads((out / "manifest.json").read_text())
    assert man["totals"]["finished"] == 8 and "stopped_this_run" not in man["totals"]
    assert man["totals"]["resumed_this_run"] == len(done)
