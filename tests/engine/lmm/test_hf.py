"""The hf backend batches concurrent callers' requests and hands each row back when it ends."""
import asyncio

import pytest

from kbridge.engine.lmm import Request
from kbridge.engine.lmm import prompts as P
from kbridge.engine.lmm import schemas as S


@pytest.fixture(scope="module")
def backend(cfg):
    from kbridge.engine import zoo
    from kbridge.engine.lmm.hf import HFBackend

    return HFBackend(zoo.resolve("lmm", cfg), cfg.lmm)


def _free(cfg, text, seed, cap):
    return Request(P.chain_describe(cfg.knowledge, text, None), None, seed, cap, 0.7, f"s{seed}", "test", 1)


def _json(cfg, text, seed):
    k = cfg.knowledge
    return Request(P.knowledge_fast(k, text, None), S.knowledge(k), seed, cfg.lmm.max_new_tokens, 0.7, f"j{seed}",
                   "test", 1)


def _reqs(cfg):
    return [_free(cfg, "a cat on a mat", 1, 40), _json(cfg, "a cup of coffee on a table", 2),
            _free(cfg, "two dogs", 3, 6), _json(cfg, "a red bus in the rain " * 3, 4)]


def test_concurrent_callers_share_one_batch_and_get_the_one_at_a_time_answers(cfg, backend):
    reqs = _reqs(cfg)
    alone = [asyncio.run(backend.generate([r]))[0] for r in reqs]  # one at a time: one batch each

    async def concurrent():
        tasks = await _arrive_together(backend, [backend.generate([r]) for r in reqs])
        return [t[0] for t in await asyncio.gather(*tasks)]

    before = (backend.batches, backend.batch_rows)
    together = asyncio.run(concurrent())
    assert (backend.batches - before[0], backend.batch_rows - before[1]) == (1, 4)  # one generate() for all four
    # the cross-setting rule: the same texts, whatever the batch (each row samples with its own seed)
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.generated_tokens for g in together] == [g.generated_tokens for g in alone]
    assert [g.prompt_tokens for g in together] == [g.prompt_tokens for g in alone]
    assert alone[2].generated_tokens <= 6 and alone[0].generated_tokens <= 40


def test_a_row_is_handed_back_the_step_it_ends(cfg, backend):
    short, long_ = _free(cfg, "a bird", 5, 3), _free(cfg, "a long story about a harbour", 6, 120)
    early = {}
    got = backend._generate_batch([short, long_], on_answer=lambda row, gen: early.setdefault(row, gen))
    assert 0 in early and early[0] == got[0]  # the short row was answered from inside the batch
    assert got[0].generated_tokens <= 3 < got[1].generated_tokens

    async def both():
        done = []

        async def call(r):
            await backend.generate([r])
            done.append(r.sample_id)

        tasks = await _arrive_together(backend, [call(long_), call(short)])
        await asyncio.gather(*tasks)
        return done

    before = backend.batches
    # one batch, the long row first: the short caller still returns first
    assert asyncio.run(both()) == [short.sample_id, long_.sample_id] and backend.batches == before + 1


async def _arrive_together(backend, coros):
    """Start ``coros`` (each one generate() call of one request) while the model is held busy, as
    if another caller's batch ran, then free it: they all meet in the queue."""
    with backend._cv:
        backend._busy = True
    tasks = [asyncio.create_task(c) for c in coros]
    while len(backend._queue) < len(coros):
        await asyncio.sleep(0.005)
    with backend._cv:
        backend._busy = False
        backend._cv.notify_all()
    return tasks


def test_a_failing_request_fails_only_its_caller(cfg, backend):
    bad = Request([{"role": "user", "content": [{"type": "image", "image": "not an image"}]}], None, 7, 4, 0.7,
                  "bad", "test", 1)
    good = _free(cfg, "a tree", 8, 5)

    async def both():
        tasks = await _arrive_together(backend, [backend.generate([r]) for r in (bad, good)])
        return await asyncio.gather(*tasks, return_exceptions=True)

    res_bad, res_good = asyncio.run(both())
    assert isinstance(res_bad, Exception)
    assert res_good[0].text == asyncio.run(backend.generate([good]))[0].text
