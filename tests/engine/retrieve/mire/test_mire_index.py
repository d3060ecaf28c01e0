"""The late-interaction index against brute-force MaxSim on a synthetic corpus of 10k token bags."""
from __future__ import annotations

import numpy as np
import pytest

from kbridge.benchmarks.retrieve import recall_at, synthetic_corpus
from kbridge.engine.retrieve.mire.index import LateIndex, LateIndexError
from kbridge.kernels.maxsim import maxsim_reference, pack


@pytest.fixture(scope="module")
def corpus():
    bags, qs = synthetic_corpus(10_000, dim=32, queries=40, seed=4)
    return bags, qs, LateIndex.build(bags)


def test_top10_recall_against_brute_force(corpus):
    bags, qs, index = corpus
    assert index.size == 10_000
    found = [index.search(q, 10)[1] for q in qs]
    want = [index.brute_force(q, 10)[1] for q in qs]
    rec = recall_at(found, want, 10)
    assert rec >= 0.95, rec
    # the index's shortlist is a small part of the corpus, or the test would be trivial
    shortlist = [len(index.search(q, 10)[2]) for q in qs]
    assert max(shortlist) <= 256


def test_exact_rerank_equals_brute_force_on_the_shortlist(corpus):
    bags, qs, index = corpus
    for q in qs[:10]:
        scores, ids, shortlist = index.search(q, 10)
        # the numpy reference MaxSim on the stored (float16) tokens of every shortlisted document
        x, off = pack([index.tokens[index.offsets[d]:index.offsets[d + 1]].astype(np.float32) for d in shortlist])
        qq, qo = pack([q.astype(np.float16).astype(np.float32)])
        ref = maxsim_reference(qq, qo, x, off, np.stack([np.zeros(len(shortlist), int), np.arange(len(shortlist))], 1))
        order = np.lexsort((shortlist, -ref))[:10]
        np.testing.assert_array_equal(ids, shortlist[order])
        np.testing.assert_allclose(scores, ref[order], atol=2e-3)  # float16 products in the kernel
        # and the same documents score the same by brute force over the whole corpus
        bf_scores, bf_ids = index.brute_force(q, index.size)
        pos = {int(d): i for i, d in enumerate(bf_ids)}
        np.testing.assert_allclose(scores, bf_scores[[pos[int(d)] for d in ids]], atol=1e-6)


def test_save_load_round_trip(corpus, tmp_path):
    _, qs, index = corpus
    index.save(tmp_path / "mire")
    back = LateIndex.load(tmp_path / "mire")
    for q in qs[:5]:
        a, b = index.search(q, 10), back.search(q, 10)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(LateIndexError, match=r"query tokens must be \[n, 32\]"):
        back.search(np.zeros((3, 8), np.float32), 10)
    with pytest.raises(LateIndexError, match="index build --retriever mire"):
        LateIndex.load(tmp_path / "nothing")


def test_small_corpora_and_k_beyond_the_corpus():
    rng = np.random.default_rng(0)
    bags = [(b / np.linalg.norm(b, axis=1, keepdims=True)).astype(np.float32)
            for b in (rng.standard_normal((n, 16)) for n in (3, 5, 2, 4))]
    index = LateIndex.build(bags)
    scores, ids, _ = index.search(bags[1], 10, ncells=len(index.centroids))
    assert sorted(ids.tolist()) == [0, 1, 2, 3] and ids[0] == 1  # a document finds itself first
    np.testing.assert_allclose(scores[0], 1.0, atol=1e-3)
