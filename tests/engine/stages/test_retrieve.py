"""The retrieve stage on the tiny CLIP twin over a corpus index of complete demo samples: each
incomplete row gets up to ``retrieve_k`` retrieved candidates after its generated ones, its own
ground truth first (the corpus item with its text and triples for a missing image, its image and
triples for a missing text), and is not retrieved for again; without an index rows pass as they
are."""
import dataclasses

import numpy as np
import torch

from kbridge.engine import data as D
from kbridge.engine.rows import Row
from kbridge.engine.retrieve.corpus import Retriever, graph_embeddings, write_corpus
from kbridge.engine.stages.rank import needs_retrieval
from kbridge.engine.types import Candidate, Knowledge, Triple


def _dropped(sample, missing, triples, candidates):
    """A row as the retrieve stage gets it: the sample with ``missing`` dropped, and its knowledge."""
    s = dataclasses.replace(sample, missing=missing, **{missing: None})
    return Row(s, knowledge=Knowledge([], "photo", triples[sample.sample_id]), candidates=candidates, turn=3)


def test_retrieve_adds_the_ground_truth_first_after_the_generated_candidates(cfg, engine, stage_ctx, call_stage,
                                                                            demo_set, tmp_path):
    complete = [i for i in range(len(demo_set)) if i not in demo_set.missing]
    samples = [D.load_sample(demo_set, i, None) for i in complete]
    triples = {s.sample_id: [Triple(f"thing{s.index}", "near", f"place{s.index}")] for s in samples}
    scorer = engine.models().scorer
    with torch.inference_mode():
        img = scorer.embed_images([s.image for s in samples]).float().numpy()
        txt = scorer.embed_texts([s.text for s in samples]).float().numpy()
        graph = graph_embeddings(scorer.embed_texts, [triples[s.sample_id] for s in samples], txt.shape[1])
    items = [{"sample_id": s.sample_id, "index": s.index, "image": str(demo_set.root / s.file_name), "text": s.text,
              "triples": [t.as_dict() for t in triples[s.sample_id]]} for s in samples]
    # the graph part alone decides the match: the tiny CLIP twin's random weights make cross-modal
    # cosines noise, while a sample's own triples embed exactly as its corpus item's
    config = dataclasses.replace(cfg, rank=dataclasses.replace(cfg.rank, retrieve_k=2, index_kind="flat",
                                                               semantic_weight=0.0, graph_weight=1.0))
    write_corpus(config, tmp_path, items, img, txt, graph)
    ctx = stage_ctx(retriever=Retriever.load(config, tmp_path), config=config)

    lost_image, lost_text = samples[0], samples[1]  # complete samples with one modality dropped
    gen = Candidate("c0", "generated", text="a generated caption")
    rows = [_dropped(lost_image, "image", triples, ()),
            _dropped(lost_text, "text", triples, (gen,))]
    out = call_stage("retrieve", rows, ctx)

    a, b = out
    assert [r.sample_id for r in out] == [r.sample_id for r in rows] and not any(r.error for r in out)
    ra, rb = a.candidates, b.candidates[1:]
    assert b.candidates[0] is gen  # generated candidates stay first
    assert len(ra) == len(rb) == 2 and all(c.source == "retrieved" and c.retriever == "faiss" for c in ra + rb)
    assert ra[0].id == f"retrieved-{lost_image.index}" and ra[0].image.size == lost_image.image.size
    assert np.array_equal(np.asarray(ra[0].image), np.asarray(lost_image.image))
    assert ra[0].triples == triples[lost_image.sample_id] and ra[0].text is None
    assert rb[0].id == f"retrieved-{lost_text.index}" and rb[0].text == lost_text.text and rb[0].image is None
    assert not any(needs_retrieval(r) for r in out)  # retrieved once, not again in a later phase
    # no index (retrieve_k 0, or none built): the rows pass as they were
    assert all(x is y for x, y in zip(call_stage("retrieve", rows, stage_ctx()), rows))
