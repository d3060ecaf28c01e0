"""Process faults: a chain of ``kbridge run`` subprocesses into one run directory, each killed (or
out of disk) at another named fault point (engine/faults.py), then a last clean re-run.

After every step the directory holds only whole, unique result lines whose images are complete
PNGs; the finished directory equals a clean run's under the same-settings rule (tests/helpers/promise.py),
every sample completed exactly once, and the LMM was asked for nothing twice except the one answer
that was in flight when the process died inside the response-cache write.

The chain has an LMM server of its own: on the session's shared one, answers that earlier tests'
delayed requests are still being given arrive while the chain counts (they made the counts vary
from run to run, on both sides of the clean run's).
"""
from __future__ import annotations

import json

import pytest

from tests.helpers import promise
from tests.helpers.fake_lmm import FakeLMM
from tests.helpers.openai_server import LMMServer
from tests.reliability.relib import check_run_dir, error_lines, kb, plain_dataset, write_config

pytestmark = pytest.mark.slow  # one chain of kbridge subprocesses, each killed by a fault point, then resumed

N = 6
CHAIN = [  # (fault, what the step must show)
    ("extract@1:kill", "killed"),
    ("cache@2:kill", "killed"),
    ("render@1:kill", "killed"),
    ("result@1:kill", "killed"),
    ("append@1:enospc", "enospc"),
    ("manifest@2:kill", "killed"),
    (None, "completes"),
]


@pytest.fixture(scope="module")
def own_server():
    with LMMServer(FakeLMM(continuous=True)) as s:
        yield s


@pytest.fixture(scope="module")
def chain(own_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    root, missing = plain_dataset(tmp / "ds", N, seed=3)
    cfg = write_config(tmp / "run.toml", own_server.url)
    args = ("run", "--data", root, "--format", "coco", "--missing", missing, "--config", cfg, "-v")
    own_server.answered = 0
    clean = kb(*args, "--out", tmp / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    clean_calls = own_server.answered
    steps = []
    own_server.answered = 0
    for fault, _ in CHAIN:
        before = own_server.answered
        r = kb(*args, "--out", tmp / "o", fault=fault)
        steps.append({"fault": fault, "rc": r.returncode, "stderr": r.stderr, "calls": own_server.answered - before,
                      "rows": check_run_dir(tmp / "o"), "files": sorted(p.name for p in (tmp / "o").iterdir())})
    return {"clean": tmp / "clean", "out": tmp / "o", "clean_calls": clean_calls, "steps": steps,
            "total_calls": own_server.answered}


@pytest.mark.parametrize("k", range(len(CHAIN)), ids=[f or "rerun" for f, _ in CHAIN])
def test_each_fault_leaves_a_consistent_run_directory(chain, k):
    step, want = chain["steps"][k], CHAIN[k][1]
    prev = len(chain["steps"][k - 1]["rows"]) if k else 0
    if want == "killed":
        assert step["rc"] == -9, step["stderr"][-2000:]  # SIGKILL at the fault point: it was reached
    elif want == "enospc":
        errs = error_lines(step["stderr"])
        assert step["rc"] == 2 and len(errs) == 1 and "No space left on device" in errs[0], step["stderr"][-2000:]
        assert "Traceback" not in step["stderr"]
    else:
        assert step["rc"] == 0, step["stderr"][-2000:]
        assert len(step["rows"]) == N
    assert len(step["rows"]) >= prev  # nothing written before is lost (check_run_dir: no torn line)


def test_the_resumed_run_equals_a_clean_run_and_repeats_no_lmm_work(chain):
    rows = check_run_dir(chain["out"])
    assert len(rows) == N
    clean = promise.rows(chain["clean"])
    resumed = {sid for sid, r in rows.items() if r["counts"]["cache_hits"]}
    assert resumed  # the kills did land inside samples
    promise.same_settings(chain["out"], chain["clean"], only=set(rows) - resumed)
    for sid in resumed:  # answers served from the cache: the same results, counted as cache hits
        a, b = rows[sid], clean[sid]
        # the engine's per-request figures (lmm_engine) cover only requests the engine served: none for
        # answers from the cache, like counts
        skip = (*promise.TIMING_FIELDS, "counts")
        assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}, sid
        assert a["counts"]["lmm_calls"] + a["counts"]["cache_hits"] == b["counts"]["lmm_calls"], sid
        for c in a["candidates"]:
            if "image" in c:
                pa = (chain["out"] / c["image"]).read_bytes()
                assert pa == (chain["clean"] / c["image"]).read_bytes(), f"{sid}/{c['id']}: image differs"
    # the one answer received but not yet cached when the process died in the cache write is asked
    # again; everything else answered before a kill came from the cache on the re-run (one row in
    # flight at a time, so no other request is out when a kill lands)
    assert chain["total_calls"] == chain["clean_calls"] + 1, (chain["total_calls"], chain["clean_calls"])
    man = json.loads((chain["out"] / "manifest.json").read_text())
    assert man["totals"]["finished"] == N and not list(chain["out"].glob(".manifest.json.*"))
    assert not list((chain["out"] / "images").glob("**/.*.png.*"))  # a killed PNG write's temp file is swept
    # the last re-run found every sample done: the kill at the final manifest write came after them
    assert chain["steps"][-1]["calls"] == 0
