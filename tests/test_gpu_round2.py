"""GPU round 2 (issue 23, ../shared/reviews/gpu-audit-2.md) on the CPU: each test asserts the rule of
the library involved (read from its pinned source, cited beside the test, or reproduced with the
library installed here), not only our own constants."""
import dataclasses
import gc
import weakref

import pytest

from fake_lmm import FakeLMM
from kbridge.engine.api import Engine


class _ClosingLMM(FakeLMM):
    """The fake LMM with the one method the real in-process backend has for this: VLLMBackend.close()
    (→ vLLM 0.32 ``AsyncLLM.shutdown()``, v1/engine/async_llm.py)."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def close(self):
        self.log.append("closed")


def test_N2_phased_release_drops_every_reference_and_closes_the_engine(cfg, engine, tmp_path):
    """Between the LMM phase and render, the LMM is closed and no reference to it survives: a
    weakref to every LMM the run loaded is dead when the generators load (CPython frees an object
    once its last reference goes; gc.collect() breaks cycles), and close() ran once per LMM."""
    log, refs, seen = [], [], []
    eng = Engine(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, schedule="phased")))
    loaded = engine.models()

    def lmm():
        m = _ClosingLMM(log)
        refs.append(weakref.ref(m))
        return m

    def generators():
        gc.collect()
        seen.append(([r() is None for r in refs], list(log)))
        return loaded.generators

    eng.loaders.update(lmm=lmm, scorer=lambda: loaded.scorer, generators=generators)
    rep = eng.run(out=tmp_path / "o")
    assert rep.completed == 8 and not rep.errors
    assert seen == [([True], ["closed"])]  # render loaded with the LMM gone: freed and shut down
    assert len(refs) == 2  # the candidate-knowledge phase loaded it again...
    eng._models.release("lmm")
    gc.collect()
    assert refs[1]() is None and log == ["closed", "closed"]  # ...and a release closes that one too


# ------------------------------------------------------------------ the one-shot GPU check


def test_gpu_check_dry_run_writes_rows_as_measured_and_at_most_five_files(engine, tmp_path):
    """scripts/gpu_check.sh --dry-run: the GPU check's own script end to end on the CPU with the
    tiny twins (built by the ``engine`` fixture). The rows file is polled while the check runs: it
    must grow row by row (a row is on disk the moment it is measured, not at the end), every row is
    one JSON object with its section and status, and OUTDIR holds at most 5 files, 2 levels deep at
    most (the GPU machine returns at most 8 files, 2 folders down)."""
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.Popen(["bash", str(root / "scripts" / "gpu_check.sh"), "--dry-run", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    rows_file = out / "bench-rows.jsonl"
    while proc.poll() is None:
        if rows_file.exists():
            n = len(rows_file.read_text().splitlines())
            if not seen or n != seen[-1]:
                seen.append(n)
        time.sleep(0.05)
    log = proc.stdout.read()
    assert proc.returncode == 0, log
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert len(seen) >= 5 and seen == sorted(seen) and seen[0] < len(rows), (seen, log)  # grew while measured
    assert all({"section", "status"} <= set(r) for r in rows)
    env_row = rows[0]
    assert env_row["section"] == "env" and env_row["dry_run"] and "/shim/kbridge/" in env_row["kbridge_from"]
    measured = {r["section"] for r in rows if r["status"] == "ok"}
    assert {"env", "unet", "vae", "lmm"} <= measured, rows  # the rest may be skipped by the budget on a busy box
    for r in rows:
        if r["status"] == "ok" and "ms_p50" in r:
            assert r["ms_p50"] > 0 and (r["tflops"] or r["gbps"] or r["name"].startswith("MaxSim")), r
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 5 and all(len(p.relative_to(out).parts) <= 3 for p in files), files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["wall_s"] <= 75, summary  # the 60 s budget + the summary's own time
    assert summary["tests"].get("passed", 0) == 0  # no GPU here: every GPU test skips, none reports a pass
    assert {s["name"] for s in summary["steps"]} >= {"import", "bench", "kernels"}
