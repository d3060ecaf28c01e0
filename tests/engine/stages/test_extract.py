"""The extract stage on the tiny LMM twin: every row gets the knowledge of its available modality
(objects, style, triples), its own request records and LMM turn 1; a row whose answers never
validate fails alone, after the client's retries, and keeps the records of every attempt."""
from kbridge.engine.types import Knowledge, Triple


def test_extract_gives_each_row_its_knowledge_and_fails_only_the_unanswerable_row(stage_ctx, call_stage, loaded_rows,
                                                                                 lmm_failing_for, demo_index):
    rows = loaded_rows([demo_index["image"], demo_index["text"], demo_index["complete"]])
    bad_id = rows[1].sample_id
    ctx = stage_ctx(lmm=lmm_failing_for({bad_id}))
    out = call_stage("extract", rows, ctx)

    assert [r.sample_id for r in out] == [r.sample_id for r in rows]
    for r in (out[0], out[2]):
        assert r.error is None and isinstance(r.knowledge, Knowledge)
        assert all(isinstance(t, Triple) for t in r.knowledge.triples)
        assert set(r.knowledge.as_dict()) >= {"objects", "style", "triples"}
        assert r.turn == 1 and [(x.stage, x.turn, x.cached) for x in r.lmm] == [("extract", 1, False)]
        assert r.lmm[0].prompt_tokens > 0 and r.lmm[0].generated_tokens > 0
        assert r.sample == rows[out.index(r)].sample  # the sample itself is not touched
    bad = out[1]
    assert bad.knowledge is None and bad.error.stage == "extract"
    assert bad.error.message.startswith("knowledge extraction: invalid JSON answer")
    assert len(bad.lmm) == 1 + ctx.client.retries  # the first answer and every retry, each recorded
