import asyncio
import json

import pytest

from kbridge.engine.lmm import LMMClient, Request, RequestLog
from kbridge.engine.domains.general import prompts as P
from kbridge.engine.domains.general import schemas as S
from kbridge.engine.lmm.grammar import max_chars
from kbridge.engine.store import ResponseCache


@pytest.fixture(scope="module")
def backend(engine):
    return engine.models().lmm


@pytest.fixture(scope="module")
def image():
    from kbridge.engine.data import DEMO_DIR, load_image

    return load_image(DEMO_DIR / "images" / "coffee.jpg")


def _req(cfg, msgs, schema, seed, sid="s", turn=1, max_new=None):
    return Request(msgs, schema, seed, max_new or cfg.lmm.max_new_tokens, 0.7, sid, "test", turn)


def _run(client, reqs):
    return asyncio.run(client.complete(reqs))


def test_structured_answers_are_always_valid(cfg, backend, image):
    k = cfg.knowledge
    reqs = [_req(cfg, P.knowledge_fast(k, None, image), S.knowledge(k), seed) for seed in range(6)]
    reqs += [_req(cfg, P.knowledge_fast(k, "a cup of coffee", None), S.knowledge(k), seed) for seed in range(3)]
    reqs += [_req(cfg, P.prompts_fast(k, 3, "a cup", _kn()), S.prompts(k, 3), 1)]
    out = _run(LMMClient(backend, RequestLog(), retries=0), reqs)
    for r in out:
        assert r.error is None, r.text
        assert isinstance(json.loads(r.text), dict)
    for r in out[:9]:
        rec = r.parsed
        assert 1 <= len(rec["objects"]) <= k.max_objects and 1 <= len(rec["triples"]) <= k.triples
        # objects are [name, count, [attributes]] tuples
        assert all(len(o) == 3 and o[0] and 1 <= o[1] <= 99 and len(o[2]) <= k.max_attributes for o in rec["objects"])
        assert all(len(t) == 3 and all(isinstance(x, str) and x for x in t) for t in rec["triples"])  # tuples
    prompts = out[-1].parsed["prompts"]
    lo, hi = k.prompt_words
    assert len(prompts) == 3 and all(lo <= len(p.split()) <= hi for p in prompts)


def _kn():
    from kbridge.engine.types import Knowledge, ObjectInfo, Triple

    return Knowledge([ObjectInfo("cup", 1, ["red"])], "photo", [Triple("cup", "on", "table")])


def test_output_does_not_depend_on_batch_composition(cfg, backend, image):
    k = cfg.knowledge
    target = _req(cfg, P.knowledge_fast(k, None, image), S.knowledge(k), 42)
    others = [_req(cfg, P.knowledge_fast(k, f"text number {i} " * (i + 1), None), S.knowledge(k), i) for i in range(3)]
    client = LMMClient(backend, RequestLog())
    alone = _run(client, [target])[0].text
    batched = _run(client, [others[0], target, others[1], others[2]])
    assert batched[1].text == alone
    # and seeds matter: another seed gives another answer
    assert _run(client, [_req(cfg, target.messages, target.schema, 43)])[0].text != alone


def test_free_text_respects_its_cap(cfg, backend):
    r = _run(LMMClient(backend, RequestLog()), [_req(cfg, P.chain_describe(cfg.knowledge, "a cat", None), None, 0,
                                                      max_new=20)])[0]
    assert r.generated_tokens <= 20 and r.parsed is None


def test_request_log_counts_and_cache(cfg, backend, image, tmp_path):
    k = cfg.knowledge
    log = RequestLog()
    cache = ResponseCache(tmp_path / "c.sqlite")
    client = LMMClient(backend, log, cache)
    reqs = [_req(cfg, P.candidate_triples(k, image), S.triples(k), s, sid=f"x{s}", turn=s + 1) for s in range(2)]
    first = _run(client, reqs)
    tot = log.totals()
    assert tot["lmm_calls"] == 2 and tot["cache_hits"] == 0
    assert tot["generated_tokens"] == sum(r.generated_tokens for r in first) > 0
    assert tot["prompt_tokens"] == sum(r.prompt_tokens for r in first) > 0
    per = log.per_sample()
    assert per["x1"]["lmm_serial_turns"] == 2 and per["x0"]["lmm_calls"] == 1
    again = _run(client, reqs)
    assert [r.text for r in again] == [r.text for r in first] and all(r.cached for r in again)
    assert log.totals()["cache_hits"] == 2 and log.totals()["lmm_calls"] == 2
    cache.close()
    # the cache survives a new process (a reopened database)
    cache2 = ResponseCache(tmp_path / "c.sqlite")
    assert _run(LMMClient(backend, RequestLog(), cache2), reqs[:1])[0].cached
    cache2.close()


def test_invalid_answers_are_retried_then_reported(cfg):
    class Flaky:
        model_id = "flaky"

        def __init__(self):
            self.calls = 0

        async def generate(self, reqs):
            from kbridge.engine.lmm import Generation

            self.calls += 1
            return [Generation("{not json" if self.calls < 3 else '{"triples": []}', 5, 3) for _ in reqs]

    be = Flaky()
    r = _run(LMMClient(be, RequestLog(), retries=2), [_req(cfg, [], S.triples(cfg.knowledge), 1)])[0]
    assert be.calls == 3 and r.error is None and r.parsed == {"triples": []}
    be = Flaky()
    r = _run(LMMClient(be, RequestLog(), retries=1), [_req(cfg, [], S.triples(cfg.knowledge), 1)])[0]
    assert r.error and "invalid JSON" in r.error


def test_schema_bound_covers_every_answer(cfg, backend, image):
    """max_chars(schema) is the worst case: answers never exceed it, and it is used as the cap."""
    import dataclasses

    k = dataclasses.replace(cfg.knowledge, exact=True)
    for schema in (S.knowledge(k), S.captions(k, 4), S.prompts(k, 4), S.triples(k), S.objects(k)):
        assert max_chars(schema) is not None
    reqs = [_req(cfg, P.captions_fast(k, 4, image, _kn()), S.captions(k, 4), seed,
                 max_new=max_chars(S.captions(k, 4)) + 8) for seed in range(3)]
    for r in _run(LMMClient(backend, RequestLog(), retries=0), reqs):
        assert r.error is None
        assert len(r.text) <= max_chars(S.captions(k, 4))
    assert max_chars({"type": "string"}) is None
    assert max_chars({"type": "object", "properties": {"a": {"enum": ["xy", "z"]}}}) == len('{"a": "xy"}')
