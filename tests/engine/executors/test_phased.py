"""The phased schedule: between phases the released models are closed and no reference to them
survives; a stage met in several phases runs on the same worker threads."""
import dataclasses
import gc
import weakref

from kbridge.engine.api import Engine
from tests.helpers.fake_lmm import FakeLMM


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

    def lmm():
        m = _ClosingLMM(log)
        refs.append(weakref.ref(m))
        return m

    def generators():
        gc.collect()
        seen.append(([r() is None for r in refs], list(log)))
        return loaded.generators

    eng.loaders.update(lmm=lmm, scorer=lambda: loaded.scorer, generators=generators)
    rep = eng.run(out=tmp_path / "o", limit=1)  # demo:0 is missing its image: render runs
    assert rep.completed == 1 and not rep.errors
    assert seen == [([True], ["closed"])]  # render loaded with the LMM gone: freed and shut down
    assert len(refs) == 2  # the candidate-knowledge phase loaded it again...
    assert len(threads) >= 3 and len(set(threads)) <= 2 and not any(t.is_alive() for t in threads)
    eng._models.release("lmm")
    gc.collect()
    assert refs[1]() is None and log == ["closed", "closed"]  # ...and a release closes that one too
