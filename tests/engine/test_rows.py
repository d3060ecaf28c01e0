"""Counted figures of a row: the critical path in tokens, measured from the request records,
and the turn structure checked against the requests' own timestamps."""
import dataclasses

from tests.helpers.engines import engine_with
from tests.helpers.fake_lmm import FakeLMM
from kbridge.engine.executors.local import stream
from kbridge.engine.rows import LMMRecord, Row, critical_path
from kbridge.engine.types import Sample


def _rec(turn, prompt, gen, start, end, cached=False):
    return LMMRecord("s", turn, prompt, gen, cached, start, end)


def test_critical_path_by_hand():
    recs = [_rec(1, 50, 100, 0.0, 1.0),                                        # turn 1: one sequence
            _rec(2, 200, 30, 1.0, 2.0), _rec(2, 210, 70, 1.0, 2.0), _rec(2, 205, 50, 1.0, 2.0),  # side by side
            _rec(2, 200, 40, 2.0, 3.0),                                        # a retry after that wave
            _rec(3, 300, 20, 3.0, 4.0), _rec(3, 100, 90, 3.5, 3.9),            # overlapping: one wave
            _rec(4, 999, 999, 5.0, 5.0, cached=True)]                          # cached: costs nothing
    row = Row(Sample("x:0", 0, "t", None, "image"), lmm=tuple(recs))
    c = row.counts()
    # decode: 100 + max(30, 70, 50) + 40 (retry) + max(20, 90) = 300; prefill: 50 + 210 + 200 + 300 = 760
    assert (c["critical_path_decode_tokens"], c["critical_path_prefill_tokens"]) == (300, 760)
    assert c["generated_tokens"] == 100 + 30 + 70 + 50 + 40 + 20 + 90 and c["lmm_calls"] == 7
    assert c["cache_hits"] == 1 and c["lmm_serial_turns"] == 3
    assert critical_path([]) == (0, 0)


def _capture(engine_cfg, engine, lmm, rows, **knowledge):
    cfg = dataclasses.replace(engine_cfg, knowledge=dataclasses.replace(engine_cfg.knowledge, **knowledge))
    eng = engine_with(cfg, engine, lmm)

    async def tee(source, stages, ctx, sink, busy):  # the real executor; the sink also keeps the rows
        return await stream(source, stages, ctx, lambda r: (rows.append(r), sink(r)), busy)

    eng.executor = tee
    return eng


def test_no_request_starts_before_its_samples_previous_turn_ended(cfg, engine, tmp_path):
    rows: list[Row] = []
    eng = _capture(cfg, engine, FakeLMM(slow={"demo:3"}, delay=0.05), rows, write="parallel")
    rep = eng.run(out=tmp_path / "o", limit=4)
    assert rep.completed == len(rows) >= 3 and not rep.errors
    n = cfg.generation.candidates
    for r in rows:
        turns = sorted({x.turn for x in r.lmm})
        # image missing: extract, n prompts side by side, n candidate triples; text: extract, n captions,
        # then their n triples (extracted from the captions)
        assert turns == [1, 2, 3], (r.sample_id, turns)
        assert sum(x.turn == 2 for x in r.lmm) == n and sum(x.turn == 3 for x in r.lmm) == len(r.candidates)
        for t in turns[1:]:
            prev_end = max(x.end for x in r.lmm if x.turn == t - 1)
            assert all(x.start >= prev_end for x in r.lmm if x.turn == t), (r.sample_id, t)
        c = r.counts()
        by_turn = {t: max(x.generated_tokens for x in r.lmm if x.turn == t) for t in turns}
        assert c["critical_path_decode_tokens"] == sum(by_turn.values()) < c["generated_tokens"]


def test_joint_and_parallel_writing_write_the_same_number_of_candidates(cfg, engine, tmp_path):
    lmm = FakeLMM()
    for mode in ("joint", "parallel"):
        rows: list[Row] = []
        _capture(cfg, engine, lmm, rows, write=mode).run(out=tmp_path / mode, limit=4)
        for r in rows:
            writes = [x for x in r.lmm if x.turn == 2]
            assert len(writes) == (1 if mode == "joint" else cfg.generation.candidates)
            assert len(r.candidates) == cfg.generation.candidates  # nothing lost to invalid answers
            if r.missing == "text":
                assert all(c.triples for c in r.candidates)  # extracted from each caption
    # every parallel prompt request names its own candidate and angle, and has its own seed
    from kbridge.engine.domains.general.schemas import prompt_text

    reqs = [q for q in lmm.requests if q.stage == "generate" and q.schema == prompt_text(cfg.knowledge)]
    seeds = {(q.sample_id, q.seed) for q in reqs}
    assert len(seeds) == len(reqs) > 0
    last = {q.messages[-1]["content"][-1]["text"] for q in reqs}
    assert len(last) == cfg.generation.candidates
