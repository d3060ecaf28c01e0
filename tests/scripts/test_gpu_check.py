"""The GPU scripts (scripts/gpu_check.sh, scripts/gpu_wheels.sh): executable bash, argument errors,
and the one-shot GPU check end to end on the CPU (``--dry-run``)."""
import pytest

from tests.helpers import ROOT


def test_gpu_scripts_are_executable_bash():
    import os
    import subprocess

    root = ROOT
    for name in ("gpu_check.sh", "gpu_wheels.sh"):
        path = root / "scripts" / name
        assert os.access(path, os.X_OK), name
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0, name
    r = subprocess.run([str(root / "scripts" / "gpu_wheels.sh"), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage: scripts/gpu_wheels.sh [DIR]" in r.stderr
    r = subprocess.run([str(root / "scripts" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument --bogus" in r.stderr


@pytest.mark.slow  # the GPU check script end to end
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

    root = ROOT
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
    assert len(seen) >= 4 and seen == sorted(seen) and seen[0] < len(rows), (seen, log)  # grew while measured
    assert all({"section", "status"} <= set(r) for r in rows)
    env_row = rows[0]
    assert env_row["section"] == "env" and env_row["dry_run"] and "/shim/kbridge/" in env_row["kbridge_from"]
    measured = {r["section"] for r in rows if r["status"] == "ok"}
    assert {"env", "unet"} <= measured, rows
    steps = {line.split("\t")[0]: line.split("\t")[1] for line in (out / "steps.tsv").read_text().splitlines()}
    told = {r["section"] for r in rows}  # a section is measured, skipped or failed, each said in a row...
    if steps["bench"] == "0":  # ...unless the hard time limit stopped the bench (a busy machine)
        assert told == {"env", "unet", "vae", "lmm", "clip", "maxsim", "compile"}, rows
    for r in rows:
        if r["status"] == "ok" and "ms_p50" in r:
            assert r["ms_p50"] > 0 and (r["tflops"] or r["gbps"] or r["name"].startswith("MaxSim")), r
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 5 and all(len(p.relative_to(out).parts) <= 3 for p in files), files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["wall_s"] <= 75, summary  # the 60 s budget + the summary's own time
    assert summary["tests"].get("passed", 0) == 0  # no GPU here: every GPU test skips, none reports a pass
    assert {s["name"] for s in summary["steps"]} >= {"import", "bench", "kernels"}
