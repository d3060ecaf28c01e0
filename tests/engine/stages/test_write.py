"""The write stage on the tiny LMM twin, after extract (LMM turn 1): a row missing its image gets
generated image candidates (a conditioning prompt and its own seed each, no image yet), a row
missing its text gets text candidates; both at LMM turn 2 with their own request records. A row
whose answers never validate fails alone."""
from kbridge.engine.types import Knowledge, ObjectInfo, Triple

KNOWLEDGE = Knowledge([ObjectInfo("cup", 1, ["red"])], "photo", [Triple("cup", "on", "table")])


def test_write_gives_image_and_text_rows_their_candidates_and_fails_only_the_unanswerable_row(
        cfg, stage_ctx, call_stage, loaded_rows, lmm_failing_for, demo_set, demo_index):
    bad_index = max(i for i, m in demo_set.missing.items() if m == "image")
    rows = loaded_rows([demo_index["image"], bad_index, demo_index["text"]], knowledge=KNOWLEDGE, turn=1)
    ctx = stage_ctx(lmm=lmm_failing_for({rows[1].sample_id}))
    out = call_stage("write", rows, ctx)

    n = cfg.generation.candidates
    per_row = n if cfg.knowledge.write == "parallel" else 1  # requests one row makes
    img, bad, txt = out
    assert [r.sample_id for r in out] == [r.sample_id for r in rows]
    for r in (img, txt):
        assert r.error is None and r.turn == 2 and r.knowledge == KNOWLEDGE
        assert [(x.stage, x.turn) for x in r.lmm] == [("generate", 2)] * per_row
        assert 0 < len(r.candidates) <= n and [c.id for c in r.candidates] == [f"c{j}" for j in range(len(r.candidates))]
        assert all(c.source == "generated" for c in r.candidates)
    assert all(c.prompt and c.image is None and c.text is None for c in img.candidates)
    assert len({c.seed for c in img.candidates}) == len(img.candidates)  # each image its own noise
    prompts = [c.prompt.lower() for c in img.candidates]
    assert len(set(prompts)) == len(prompts)  # repeats dropped
    texts = [c.text.lower() for c in txt.candidates]
    assert all(texts) and len(set(texts)) == len(texts) and all(c.image is None for c in txt.candidates)
    assert bad.candidates == () and bad.error.stage == "write"
    assert bad.error.message.startswith("prompt writing: invalid JSON answer")
    assert len(bad.lmm) == per_row * (1 + ctx.client.retries)
