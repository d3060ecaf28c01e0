"""The hf backend: it batches concurrent callers' requests and hands each row back when it ends;
its guided sampler keeps every tensor on the logits' device (xgrammar faked at its boundary) and
draws each row's noise from that row's own generator."""
import asyncio
import json
import sys

import pytest
import torch

from kbridge.engine.lmm import Request
from kbridge.engine.domains.general import prompts as P
from kbridge.engine.domains.general import schemas as S


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


class _FakeXgr:
    """xgrammar at its boundary: a host bitmask, and an apply that demands the logits' device."""

    def __init__(self):
        self.applied = []

    @staticmethod
    def allocate_token_bitmask(batch, vocab):
        return torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)

    def apply_token_bitmask_inplace(self, logits, bitmask, vocab_size, indices):
        if bitmask.device != logits.device:  # what xgrammar raises on CUDA logits + a CPU bitmask
            raise RuntimeError("logits and bitmask should be on the same device")
        self.applied.append((logits.device, bitmask.device, list(indices)))


class _Matcher:
    def fill_next_token_bitmask(self, bitmask, i):
        assert bitmask.device.type == "cpu"  # xgrammar's matchers write host memory
        bitmask[i].fill_(-1)

    def accept_token(self, tok):
        return True


def _sampler(monkeypatch, greedy=False):
    from kbridge.engine.lmm import hf

    fake = _FakeXgr()
    monkeypatch.setitem(sys.modules, "xgrammar", fake)
    s = hf._GuidedSampler([_Matcher(), None], [1, 2], [0.7, 0.3], [50, 50], eos=3, banned=[4, 5], vocab=40,
                          greedy=greedy)
    return s, fake


def test_guided_sampler_bitmask_meets_the_logits_on_their_device(monkeypatch):
    s, fake = _sampler(monkeypatch, greedy=True)
    out = s(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 40, device="meta"))
    assert out.device.type == "meta"
    assert fake.applied == [(torch.device("meta"), torch.device("meta"), [0])]


def test_guided_sampler_keeps_temperatures_banned_ids_and_noise_on_the_logits_device(monkeypatch):
    s, _ = _sampler(monkeypatch)
    out = s(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 40, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 40)
    assert s.temps.device.type == "meta" and s.banned.device.type == "meta"
    # CUDA logits get CUDA generators; CPU / meta logits the CPU's (same numbers as before on CPU)
    assert all(g.device.type == "cpu" for g in s.gens)


def test_guided_sampler_cpu_noise_is_each_rows_own_whatever_the_batch(monkeypatch):
    """On the CPU the noise is what each row's own generator draws: the same whatever the batch."""
    from kbridge.engine.lmm import hf

    monkeypatch.setitem(sys.modules, "xgrammar", _FakeXgr())
    scores = torch.randn(2, 40, generator=torch.Generator().manual_seed(0))
    both = hf._GuidedSampler([None, None], [1, 2], [0.7, 0.7], [9, 9], 3, [], 40, False)(None, scores.clone())
    alone = hf._GuidedSampler([None], [2], [0.7], [9], 3, [], 40, False)(None, scores[1:].clone())
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=0)
    u = torch.rand(40, generator=torch.Generator().manual_seed(1)).clamp_(1e-20, 1.0)
    torch.testing.assert_close(both[0], scores[0] / 0.7 - torch.log(-torch.log(u)), rtol=1e-6, atol=1e-6)


def test_a_structured_row_ends_when_its_grammar_is_complete_without_decoding_the_end_token(cfg, backend, monkeypatch):
    """The end token a complete answer's grammar forces is not decoded: the same texts, each
    structured row one generated token fewer, free-text rows unchanged."""
    from kbridge.engine.lmm import hf

    k = cfg.knowledge
    reqs = [Request(P.caption_triples(k, "a cup of coffee on a table"), S.triple_list(k, 2), 2, 200, 0.7, "t2", "test", 1),
            _free(cfg, "a cat on a mat", 1, 12),
            Request(P.prompt_one(k, 2, 0, "a red bus", _kn()), S.prompt_text(k), 4, 200, 0.7, "p4", "test", 1)]
    now = backend._generate_batch(reqs)
    monkeypatch.setattr(hf._GuidedSampler, "_only_end", lambda self, i: False)  # the end token decoded, as before
    before = backend._generate_batch(reqs)
    assert [g.text for g in now] == [g.text for g in before]
    for r, a, b in zip(reqs, now, before):
        if r.schema is None:
            assert a.token_ids == b.token_ids and a.generated_tokens == b.generated_tokens
        else:
            json.loads(a.text)
            assert b.token_ids[-1] == backend.eos and a.token_ids == b.token_ids[:-1]
            assert a.generated_tokens == b.generated_tokens - 1 == len(a.token_ids)


def test_records_on_the_tiny_profile_are_those_decoded_with_the_end_token(engine, tmp_path, monkeypatch):
    """The records of a tiny run are identical to a run that decodes each structured answer's end
    token (the behaviour before); only the counted generated tokens differ, by one per structured
    sequence."""
    from kbridge.engine.lmm import hf
    from tests.helpers.promise import rows

    engine.run(out=tmp_path / "now", limit=4)
    monkeypatch.setattr(hf._GuidedSampler, "_only_end", lambda self, i: False)
    engine.run(out=tmp_path / "before", limit=4)
    a, b = rows(tmp_path / "now"), rows(tmp_path / "before")
    assert set(a) == set(b) and len(a) == 4
    strip = lambda r: {k: v for k, v in r.items() if k not in ("timings", "lmm_engine", "counts")}  # noqa: E731
    for sid in a:
        assert strip(a[sid]) == strip(b[sid]), sid
        ca, cb = a[sid]["counts"], b[sid]["counts"]
        assert {k: v for k, v in ca.items() if "generated" not in k and "decode" not in k} == \
            {k: v for k, v in cb.items() if "generated" not in k and "decode" not in k}
        # every LMM sequence of the general domain's fast path is structured: one token fewer each
        assert cb["generated_tokens"] - ca["generated_tokens"] == ca["lmm_calls"] > 0, sid


def _kn():
    from kbridge.engine.types import Knowledge, ObjectInfo, Triple

    return Knowledge([ObjectInfo("bus", 1, ["red"])], "photo", [Triple("bus", "in", "rain")])
