"""The phased schedule: phased and fused runs agree under the determinism promise; a phased run
killed inside a phase resumes there without redoing finished phases' LMM work; between phases the
released models are closed and no reference to them survives; a stage met in several phases runs
on the same worker threads."""
import dataclasses
import gc
import json
import weakref

import pytest

from kbridge.engine.api import Engine
from tests.helpers import promise
from tests.helpers.engines import engine_with
from tests.helpers.fake_lmm import FakeLMM
from tests.helpers.jsonl import read_jsonl


class _ClosingLMM(FakeLMM):
    """The fake LMM with the one method the real in-process backend has for this: VLLMBackend.close()
    (→ vLLM 0.32 ``AsyncLLM.shutdown()``, v1/engine/async_llm.py)."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def close(self):
        self.log.append("closed")


def test_phased_release_drops_every_reference_and_closes_the_engine(cfg, engine, tmp_path, monkeypatch):
    """Between the LMM phase and render, the LMM is closed and no reference to it survives: a
    weakref to every LMM the run loaded is dead when the generators load (CPython frees an object
    once its last reference goes; gc.collect() breaks cycles), and close() ran once per LMM. And
    a stage that runs in several phases (load: phases 1, 3 and 4) runs on the same worker threads
    in all of them (thread-local state such as cudagraph trees is not rebuilt per phase), and the
    run ends them."""
    import threading

    from kbridge.engine.stages import STAGES

    threads = []
    load = STAGES["load"]
    monkeypatch.setitem(STAGES, "load", dataclasses.replace(
        load, fn=lambda rows, ctx: threads.append(threading.current_thread()) or load.fn(rows, ctx)))
    log, refs, seen = [], [], []
    eng = Engine(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, schedule="phased"),
                                     generation=dataclasses.replace(cfg.generation, candidates=1)))  # one render
    loaded = engine.models()

    def lmm(_cfg):
        m = _ClosingLMM(log)
        refs.append(weakref.ref(m))
        return m

    def generators(_cfg):
        gc.collect()
        seen.append(([r() is None for r in refs], list(log)))
        return loaded.generators

    eng.loaders.update(lmm=lmm, scorer=lambda _: loaded.scorer, generators=generators)
    rep = eng.run(out=tmp_path / "o", limit=1)  # demo:0 is missing its image: render runs
    assert rep.completed == 1 and not rep.errors
    assert seen == [([True], ["closed"])]  # render loaded with the LMM gone: freed and shut down
    assert len(refs) == 2  # the candidate-knowledge phase loaded it again...
    assert len(threads) >= 3 and len(set(threads)) <= 2 and not any(t.is_alive() for t in threads)
    eng._models.release("lmm")
    gc.collect()
    assert refs[1]() is None and log == ["closed", "closed"]  # ...and a release closes that one too


def _engine(cfg, engine, lmm, **run):
    return engine_with(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **run)), engine, lmm)


def test_phased_equals_fused_and_records_the_schedule(cfg, engine, tmp_path):
    fused = _engine(cfg, engine, FakeLMM(), schedule="fused").run(out=tmp_path / "fused")
    lmm = FakeLMM()
    phased = _engine(cfg, engine, lmm, schedule="phased").run(out=tmp_path / "phased")
    assert fused.completed == phased.completed == 8 and not phased.errors
    # same thread count and one sample per dense call: identical results (images via lossless PNGs)
    promise.same_settings(tmp_path / "fused", tmp_path / "phased")
    man = json.loads((tmp_path / "phased" / "manifest.json").read_text())
    assert man["schedule"] == "phased" and man["phases"][1] == ["render"]
    assert not (tmp_path / "phased" / "phases").exists()  # persisted rows go when the run ends
    turns = {r.sample_id: [] for r in lmm.requests}
    for r in lmm.requests:  # phased: every extract/write answer came before any candidate analysis
        turns[r.sample_id].append(r.stage)
    order = [r.stage for r in lmm.requests]
    assert max(i for i, s in enumerate(order) if s in ("extract", "generate")) < order.index("rank")


@pytest.mark.parametrize("after", [0, 2], ids=["at-the-phase-boundary", "mid-phase"])
def test_a_phased_run_killed_inside_a_phase_resumes_there(cfg, engine, tmp_path, monkeypatch, after):
    from kbridge.engine.executors import phased

    out = tmp_path / "o"
    real = phased.PhaseFiles.persist
    seen = {"n": 0}

    def dies_in_phase_1(self, k, row, store):  # render's output: the run stops after `after` rows
        if k == 1:
            seen["n"] += 1
            if seen["n"] > after:
                raise OSError(28, "No space left on device")
        real(self, k, row, store)

    monkeypatch.setattr(phased.PhaseFiles, "persist", dies_in_phase_1)
    first_lmm = FakeLMM()
    with pytest.raises(OSError, match="No space left"):
        _engine(cfg, engine, first_lmm, schedule="phased").run(out=out)
    assert len(read_jsonl(out / "phases" / "0.jsonl")) == 8
    assert len(read_jsonl(out / "phases" / "1.jsonl")) == after if after else not (out / "phases" / "1.jsonl").exists()
    monkeypatch.setattr(phased.PhaseFiles, "persist", real)
    second_lmm = FakeLMM()
    rep = _engine(cfg, engine, second_lmm, schedule="phased").run(out=out)
    rows = read_jsonl(out / "results.jsonl")
    assert rep.completed == 8 and len(rows) == len({r["sample_id"] for r in rows}) == 8
    # phase 0 (extract + write) was complete: the re-run asked the LMM only for candidate analysis
    assert {r.stage for r in second_lmm.requests} == {"rank"}
    # and rendered only what phase 1 had not persisted
    assert all(c["image"].startswith("images/") for r in rows for c in r["candidates"] if "image" in c)
    promise.same_settings(out, _fused_reference(cfg, engine, tmp_path))


def _fused_reference(cfg, engine, tmp_path):
    ref = tmp_path / "ref"
    _engine(cfg, engine, FakeLMM(), schedule="fused").run(out=ref)
    return ref
