"""The command line, as a user runs it: subprocesses, exit codes, a SIGKILL mid-run and a resume."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.jsonl import read_jsonl
from kbridge.engine import data as D

KB = [sys.executable, "-m", "kbridge.cli"]


def kb(*args, **kw):
    return subprocess.run([*KB, *map(str, args)], capture_output=True, text=True, timeout=600, **kw)


def test_models_list_json_names_every_slot():
    r = kb("models", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {m["name"] for m in rows} >= {"lmm", "sdxl_base", "sdxl_refiner", "clip", "blip", "cheff", "med_clip"}
    assert all(m["source"] == "tiny" for m in rows)


def test_make_missing_writes_reference_format(tmp_path):
    r = kb("data", "make-missing", "--total", 20, "--type", "text", "--ratio", 0.5, "--out", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "m.json").read_text())
    assert cfg["type"] == "text" and cfg["num_missing"] == 10 and cfg["total"] == 20
    assert D.read_missing_config(tmp_path / "m.json", 20) == {int(k): "text" for k in cfg["missing_details"]}


def test_bad_dataset_is_one_clear_line(tmp_path):
    r = kb("run", "--data", tmp_path / "nope", "--out", tmp_path / "o")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "does not exist" in lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.slow  # a kbridge run in a subprocess
def test_run_prints_summary(tmp_path):
    r = kb("run", "--limit", 2, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert "completed now" in r.stdout and "LMM calls" in r.stdout
    assert len(read_jsonl(tmp_path / "o" / "results.jsonl")) == 2


@pytest.mark.slow  # a kbridge run killed, then resumed, in subprocesses
def test_sigkill_mid_run_then_resume_finishes_every_sample_once(tmp_path):
    out = tmp_path / "o"
    cfg = tmp_path / "kb.toml"
    cfg.write_text("[run]\nbatch_size = 1\nrows_in_flight = 1\n")  # one sample at a time: fine-grained
    proc = subprocess.Popen([*KB, "run", "--out", str(out), "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(read_jsonl(results))
    assert 2 <= before < 8
    with open(results, "ab") as f:  # what a kill in the middle of a write would leave
        f.write(b'{"sample_id": "demo:99", "trunc')
    r = kb("run", "--out", out, "--config", cfg)
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(results)  # every line parses: the torn tail was cut
    ids = [row["sample_id"] for row in rows]
    assert len(ids) == len(set(ids)) == 8
    assert sorted(ids) == sorted(f"demo:{i}" for i in D.open_dataset().missing)
    man = json.loads((out / "manifest.json").read_text())
    assert man["totals"]["finished"] == 8
