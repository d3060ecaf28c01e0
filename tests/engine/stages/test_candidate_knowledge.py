"""The candidate-knowledge stage on the tiny LMM twin, after render (LMM turn 2): every generated
image candidate, and every written caption without triples (``caption_triples_from =
"extracted"``), gets its triples from one request of LMM turn 3; triples a caption already has are
kept; a row whose answers never validate fails alone."""
import dataclasses

from PIL import Image

from kbridge.engine.stages.write import image_candidates
from kbridge.engine.types import Candidate, Knowledge, Triple

KNOWLEDGE = Knowledge([], "photo", [Triple("cup", "on", "table")])


def test_candidate_knowledge_gives_each_candidate_its_triples_and_fails_only_the_unanswerable_row(
        cfg, stage_ctx, call_stage, loaded_rows, lmm_failing_for, demo_set, demo_index):
    first, second = [i for i, m in sorted(demo_set.missing.items()) if m == "image"][:2]
    img, bad, txt = loaded_rows([first, second, demo_index["text"]], knowledge=KNOWLEDGE, turn=2)
    red, green = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "green")
    img = img.replace(candidates=tuple(dataclasses.replace(c, image=im) for c, im in
                                       zip(image_candidates(img.sample, ["a red square", "a green square"], 1),
                                           (red, green))))
    bad = bad.replace(candidates=tuple(dataclasses.replace(c, image=red)
                                       for c in image_candidates(bad.sample, ["a red square"], 1)))
    own = [Triple("dog", "runs on", "grass")]
    txt = txt.replace(candidates=(Candidate("c0", "generated", text="a dog runs on grass", triples=own),
                                  Candidate("c1", "generated", text="a cat sleeps on a sofa")))
    config = dataclasses.replace(cfg, knowledge=dataclasses.replace(cfg.knowledge, caption_triples_from="extracted"))
    ctx = stage_ctx(lmm=lmm_failing_for({bad.sample_id}), config=config)
    out = call_stage("candidate_knowledge", [img, bad, txt], ctx)

    r_img, r_bad, r_txt = out
    assert [r.sample_id for r in out] == [img.sample_id, bad.sample_id, txt.sample_id]
    for r, asked in ((r_img, 2), (r_txt, 1)):  # requests: both images; only the caption without triples
        assert r.error is None and r.turn == 3
        assert [(x.stage, x.turn) for x in r.lmm] == [("rank", 3)] * asked
    assert all(c.triples and all(isinstance(t, Triple) for t in c.triples) for c in r_img.candidates)
    assert [c.image for c in r_img.candidates] == [red, green] and r_img.candidates[0].image is red  # untouched
    assert r_txt.candidates[0].triples == own and r_txt.candidates[1].triples
    assert r_bad.error.stage == "candidate_knowledge" and r_bad.error.message.startswith("candidate c0 triples")
    assert r_bad.candidates[0].triples == [] and len(r_bad.lmm) == 1 + ctx.client.retries
