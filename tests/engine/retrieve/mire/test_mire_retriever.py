"""MIRe as the engine's candidate source for text-missing samples (tiny twin, constructed corpus)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from kbridge.engine.config import ConfigError, PipelineConfig, RankConfig, build_config
from kbridge.engine.retrieve.mire.retriever import INSTRUCTION, MireRetriever, Retrievers, build_mire_index
from kbridge.engine.retrieve.corpus import write_corpus
from kbridge.engine.types import Candidate, Knowledge, Sample, Triple

TEXTS = ["a cat on a wooden table", "a red bus on the street", "an astronaut holds a flag",
         "a cup of coffee on a saucer", "a dog in the park near a tree", "snow on the mountain",
         "a man wearing a helmet", "two birds in the sky"]


@pytest.fixture()
def corpus(tmp_path, cfg):
    """A run directory with the faiss corpus (random embeddings: its scores do not matter here) and
    the MIRe index over the items' texts."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((len(TEXTS), 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    items = [{"sample_id": f"d:{i}", "index": i, "image": f"img{i}", "text": t,
              "triples": [Triple("thing", "in", f"place{i}").as_dict()]} for i, t in enumerate(TEXTS)]
    c = dataclasses.replace(cfg, rank=dataclasses.replace(cfg.rank, retriever="mire", retrieve_k=3))
    write_corpus(c, tmp_path / "index", items, x, x, x)
    summary = build_mire_index(c, tmp_path / "index")
    return c, tmp_path, summary


def _image(seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8))


def test_text_missing_samples_get_the_brute_force_maxsim_top_k(corpus):
    c, run_dir, summary = corpus
    assert summary["documents"] == len(TEXTS) and (run_dir / "index" / "mire" / "tokens.npy").exists()
    ret = MireRetriever.load(c, run_dir / "index")
    samples = [Sample("q:0", 100, None, _image(1), "text"), Sample("q:1", 101, "a cat", None, "image")]
    found = ret.candidates(None, samples, [Knowledge([], "", [])] * 2)
    assert found[1] == []  # image-missing: not MIRe's
    assert len(found[0]) == 3
    assert all(x.source == "retrieved" and x.retriever == "mire" and x.text in TEXTS for x in found[0])
    assert found[0][0].triples and found[0][0].triples[0].head == "thing"
    # the order is exact MaxSim of (image + instruction) against every document's token bag
    enc = ret.encoder
    q = enc.encode_queries([INSTRUCTION], [samples[0].image])[0]
    docs = enc.encode_docs(TEXTS)
    scores = [float((q @ d.T).max(1).mean()) for d in docs]
    want = [TEXTS[i] for i in np.argsort(scores)[::-1][:3]]
    assert [x.text for x in found[0]] == want
    np.testing.assert_allclose([x.scores["mire_maxsim"] for x in found[0]], sorted(scores)[::-1][:3], atol=2e-3)


class FakeFaiss:
    def __init__(self):
        self.seen = []

    def candidates(self, scorer, samples, knowledge):
        self.seen.append([s.sample_id for s in samples])
        return [[Candidate(f"retrieved-{i}", "retrieved", text=TEXTS[i], retriever="faiss") for i in (0, 1)]
                if s.missing == "text" else [Candidate("retrieved-9", "retrieved", retriever="faiss")]
                for s in samples]


def test_routing_mire_and_both(corpus):
    c, run_dir, _ = corpus
    mire = MireRetriever.load(c, run_dir / "index")
    samples = [Sample("q:0", 100, None, _image(1), "text"), Sample("q:1", 101, "a cat", None, "image")]
    kn = [Knowledge([], "", [])] * 2
    fake = FakeFaiss()
    only = Retrievers(fake, mire, both=False).candidates(None, samples, kn)
    assert fake.seen == [["q:1"]]  # "mire": faiss serves the image-missing sample only
    assert [x.retriever for x in only[0]] == ["mire"] * 3 and [x.id for x in only[1]] == ["retrieved-9"]
    fake = FakeFaiss()
    both = Retrievers(fake, mire, both=True).candidates(None, samples, kn)
    assert fake.seen == [["q:0", "q:1"]]
    texts = [x.text for x in both[0]]
    assert texts[:2] == TEXTS[:2] and len(texts) == len(set(texts))  # found by both: kept once
    assert {x.retriever for x in both[0][2:]} <= {"mire"}


def test_load_retriever_follows_the_config(corpus, caplog):
    from kbridge.engine.models import load_retriever
    from kbridge.engine.retrieve.corpus import Retriever

    c, run_dir, _ = corpus
    assert isinstance(load_retriever(c, run_dir), Retrievers)
    faiss_only = dataclasses.replace(c, rank=dataclasses.replace(c.rank, retriever="faiss"))
    assert isinstance(load_retriever(faiss_only, run_dir), Retriever)
    other_model = dataclasses.replace(c, models=dataclasses.replace(c.models, mire="/elsewhere"))
    assert isinstance(load_retriever(other_model, run_dir), Retriever)  # stale MIRe index: faiss alone
    assert "rebuild it with `kbridge index build --retriever mire`" in caplog.text


def test_retriever_setting_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="rank.retriever"):
        build_config("tiny", None, {"rank": {"retriever": "plaid"}})
    assert PipelineConfig(rank=RankConfig()).rank.retriever == "faiss"


def test_config_hash_changes_only_when_mire_is_used():
    base = PipelineConfig()
    other_model = dataclasses.replace(base, models=dataclasses.replace(base.models, mire="/models/mire"))
    assert base.result_hash() == other_model.result_hash()  # faiss runs keep their hashes
    mire = dataclasses.replace(base, rank=dataclasses.replace(base.rank, retriever="mire"))
    mire_other = dataclasses.replace(mire, models=dataclasses.replace(mire.models, mire="/models/mire"))
    assert len({base.result_hash(), mire.result_hash(), mire_other.result_hash()}) == 3


def test_results_record_the_retriever(tmp_path):
    from kbridge.engine.rows import Row
    from kbridge.engine.store import RunStore

    store = RunStore(tmp_path, "k", {"config": {}})
    s = Sample("d:1", 1, None, _image(0), "text")
    row = Row(s, Knowledge([], "", []), (Candidate("retrieved-mire-3", "retrieved", text="x", retriever="mire"),),
              best="retrieved-mire-3")
    store.write_result(row, 0.0)
    store.close()
    row = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])
    assert row["candidates"][0]["retriever"] == "mire" and row["candidates"][0]["source"] == "retrieved"
