"""What the stage tests share: the one context a stage call gets (``stage_ctx``), the stage call
itself (``call_stage``), the demo set and a sample of each kind in it (``demo_set``,
``demo_index``), rows as the load stage hands them on (``loaded_rows``), and an LMM that cannot
answer for chosen samples (``lmm_failing_for``).

Every stage test builds its context here and nowhere else: the session's loaded tiny twins
(``engine`` fixture), an LMM client without a response cache, the bundled demo set.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect

import pytest


@pytest.fixture(scope="session")
def demo_set():
    from kbridge.engine.data import open_dataset

    return open_dataset()


@pytest.fixture
def stage_ctx(cfg, engine, demo_set):
    """``stage_ctx(lmm=None, retriever=None, config=None) -> Ctx``: the context of a fused run on the
    tiny profile. ``lmm``: another backend than the session's tiny LMM twin; ``retriever``: a corpus
    index for the retrieve stage (the session's models are not changed); ``config``: another config."""
    from kbridge.engine.domains import domain_of
    from kbridge.engine.lmm import LMMClient, RequestLog
    from kbridge.engine.stages import Ctx

    def make(lmm=None, retriever=None, config=None):
        c = config or cfg
        models = dataclasses.replace(engine.models(), retriever=retriever)
        client = LMMClient(lmm or models.lmm, RequestLog(), None, greedy=c.lmm.greedy)
        return Ctx(cfg=c, domain=domain_of(c), models=models, client=client, dataset=demo_set,
                   generator=models.generators[0])

    return make


@pytest.fixture
def call_stage():
    """``call_stage(name, rows, ctx) -> rows``: the stage's function called once on the rows, as an
    executor calls it on a micro-batch of rows the stage applies to."""
    from kbridge.engine.stages import STAGES

    def call(name, rows, ctx):
        out = STAGES[name].fn(list(rows), ctx)
        return asyncio.run(out) if inspect.isawaitable(out) else out

    return call


@pytest.fixture
def loaded_rows(demo_set):
    """``loaded_rows(indices, knowledge=None, turn=0) -> rows``: demo samples as the load stage hands
    them on (available modality decoded), optionally with knowledge and at an LMM turn."""
    from kbridge.engine import data as D
    from kbridge.engine.rows import Row

    def make(indices, knowledge=None, turn=0):
        return [Row(D.load_sample(demo_set, i, demo_set.missing.get(i)), knowledge=knowledge, turn=turn)
                for i in indices]

    return make


@pytest.fixture
def lmm_failing_for(engine):
    """``lmm_failing_for(sample_ids)``: the session's tiny LMM twin, except that every request of
    those samples is answered with text that is not JSON (their structured answers never validate)."""
    from kbridge.engine.lmm import Generation

    class FailingFor:
        def __init__(self, inner, bad):
            self.inner, self.bad = inner, set(bad)

        def __getattr__(self, name):  # model_id, continuous_batching, the tokenizer: the twin's own
            return getattr(self.inner, name)

        async def generate(self, requests):
            good = [r for r in requests if r.sample_id not in self.bad]
            answers = iter(await self.inner.generate(good) if good else [])
            return [Generation("not json", 10, 3) if r.sample_id in self.bad else next(answers) for r in requests]

    return lambda sample_ids: FailingFor(engine.models().lmm, sample_ids)


@pytest.fixture(scope="session")
def demo_index(demo_set):
    """A demo sample of each kind: {"image": one missing its image, "text": one missing its text,
    "complete": one with both}."""
    m = demo_set.missing
    return {"image": min(i for i in m if m[i] == "image"), "text": min(i for i in m if m[i] == "text"),
            "complete": min(i for i in range(len(demo_set)) if i not in m)}
