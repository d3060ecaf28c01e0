"""Concurrency: one run per output directory (an OS-level lock, released on any exit, a kill
included); two processes building the same tiny twin or ONNX artifact at once in one cache
directory both succeed and leave one valid copy."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from kbridge.engine import locks
from kbridge.engine.store import RunInUse, RunStore
from tests.helpers import ROOT
from tests.reliability.relib import BUILD_BOTH, KB, error_lines, kb, plain_dataset, write_config


@pytest.mark.slow  # two kbridge runs in subprocesses
def test_a_second_run_on_the_same_out_exits_2_naming_the_holder(fake_server, tmp_path):
    root, missing = plain_dataset(tmp_path / "ds", 2)
    cfg = write_config(tmp_path / "c.toml", fake_server.url)
    out = tmp_path / "o"
    args = ["run", "--data", str(root), "--format", "coco", "--missing", str(missing), "--config", str(cfg),
            "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KBRIDGE_FAULT": "extract@1:hang"}
    first = subprocess.Popen([*KB, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):  # until the first run holds the directory (it hangs at its first extraction)
            if locks.holder(out / ".lock") == str(first.pid):
                break
            time.sleep(0.1)
        assert locks.holder(out / ".lock") == str(first.pid)
        t = time.time()
        second = kb(*args, timeout=120)
        took = time.time() - t
        errs = error_lines(second.stderr)
        assert second.returncode == 2 and errs == [f"error: {out} is in use by another kbridge run (pid {first.pid})"], \
            second.stderr
        print(f"second run refused after {took:.1f} s (process start included)")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    fd = locks.try_lock(out / ".lock")  # the kernel released the killed run's lock
    assert fd is not None
    locks.unlock(fd)


def test_the_run_lock_is_released_on_close_and_on_a_refused_open(tmp_path):
    a = RunStore(tmp_path / "o", "h1", {})
    with pytest.raises(RunInUse, match=r"in use by another kbridge run \(pid %d\)" % os.getpid()):
        RunStore(tmp_path / "o", "h1", {})
    a.close()
    with pytest.raises(Exception, match="another configuration"):  # refused after taking the lock …
        RunStore(tmp_path / "o", "h2", {})
    RunStore(tmp_path / "o", "h1", {}).close()  # … and it was given back


def _both(script: str, *args) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ps = [subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for _ in range(2)]
    out = []
    for p in ps:
        so, se = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, so, se))
    return out


@pytest.fixture(scope="module")
def built_twice(tmp_path_factory):
    """Two processes started together, each building the same tiny twin, then the same ONNX
    artifact, in one fresh cache directory."""
    tmp = tmp_path_factory.mktemp("race")
    runs = _both(BUILD_BOTH, tmp / "w.safetensors", tmp / "cache", ROOT)
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "cache", [r.stdout.splitlines() for r in runs]


@pytest.mark.slow  # two processes building at once
def test_two_processes_building_one_tiny_twin_leave_one_valid_copy(built_twice):
    cache, outs = built_twice
    assert outs[0][0] == outs[1][0]
    dirs = [p for p in (cache / "zoo").iterdir() if p.is_dir()]
    assert len(dirs) == 1 and (dirs[0] / ".complete").exists()  # no half-built directory left behind
    import json

    from safetensors import safe_open

    for f in dirs[0].rglob("*.safetensors"):  # every weight file whole
        with safe_open(str(f), "pt") as st:
            assert all(st.get_tensor(k).numel() >= 0 for k in st.keys())
    assert all(json.loads(f.read_text()) is not None for f in dirs[0].rglob("config.json"))


@pytest.mark.slow  # two processes exporting at once
def test_two_processes_exporting_one_onnx_artifact_leave_one_valid_copy(built_twice):
    from kbridge.export.cache import intact

    cache, outs = built_twice
    assert sorted(o[1].split()[0] for o in outs) == ["False", "True"]  # one exported, the other reused it
    [d] = [p for p in (cache / "artifacts" / "toy.linear").iterdir() if p.is_dir()]
    assert intact(d, d / "model.onnx")
