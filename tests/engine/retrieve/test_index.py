"""faiss index (exact and IVF-PQ), its saved memory-mapped form, retrieved candidates, and the
GPU copy's rules (faiss-gpu faked at its boundary: searched on the CPU unless asked, IVF-PQ only in
the code sizes faiss-gpu accepts)."""
import sys
import types

import numpy as np
import pytest
import torch

pytest.importorskip("faiss", reason="faiss is in the cpu extra: pip install -e '.[cpu,test]'")

from kbridge.engine.config import PipelineConfig, RankConfig  # noqa: E402
from kbridge.engine.retrieve.index import EmbeddingIndex, ivfpq_shape  # noqa: E402
from kbridge.engine.retrieve.corpus import Retriever, graph_embeddings, write_corpus  # noqa: E402
from kbridge.engine.rank.score import rank_batch  # noqa: E402
from kbridge.engine.types import Candidate, Knowledge, Sample, Triple  # noqa: E402


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_topk(xb, xq, k):
    s = xq @ xb.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


def test_flat_topk_equals_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    xb, xq = unit_rows(rng, 3000, 64), unit_rows(rng, 50, 64)
    index = EmbeddingIndex.build(xb, kind="flat")
    assert index.kind == "flat" and index.size == 3000
    scores, ids = index.search(xq, 10)
    want_s, want_i = brute_topk(xb, xq, 10)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(scores, want_s, atol=1e-5)
    # saved and loaded memory-mapped: the same answers
    loaded = EmbeddingIndex.load(index.save(tmp_path / "flat.faiss"), mmap=True)
    s2, i2 = loaded.search(xq, 10)
    np.testing.assert_array_equal(i2, ids)
    np.testing.assert_allclose(s2, scores, atol=1e-6)


def test_fewer_items_than_k_pad_with_minus_one():
    index = EmbeddingIndex.build(np.eye(3, 8, dtype=np.float32), kind="flat")
    _, ids = index.search(np.eye(1, 8, dtype=np.float32), 5)
    assert ids[0, 0] == 0 and list(ids[0, 3:]) == [-1, -1]


def test_ivfpq_is_chosen_for_large_corpora_and_finds_itself(tmp_path):
    rng = np.random.default_rng(1)
    xb = unit_rows(rng, 4000, 64)
    index = EmbeddingIndex.build(xb, kind="auto", ivfpq_min=2000, nprobe=64)
    assert index.kind == "ivfpq"
    lists, m, bits = ivfpq_shape(4000, 64)
    assert 64 % m == 0 and 4000 // lists >= 39 and bits <= 8
    _, ids = index.search(xb[:200], 10)
    assert np.mean([i in row for i, row in enumerate(ids)]) >= 0.9  # approximate, but finds itself
    loaded = EmbeddingIndex.load(index.save(tmp_path / "ivfpq.faiss"))
    assert loaded.kind == "ivfpq"
    np.testing.assert_array_equal(loaded.search(xb[:20], 5)[1], index.search(xb[:20], 5)[1])


def test_bad_kind_and_width_are_refused():
    with pytest.raises(ValueError, match="unknown index kind"):
        EmbeddingIndex.build(np.eye(2, dtype=np.float32), kind="hnsw")
    with pytest.raises(ValueError, match="width"):
        EmbeddingIndex.build(np.eye(2, dtype=np.float32)).search(np.ones((1, 3)), 1)


class TableScorer:
    """Constructed embeddings: texts by string (triple texts included), images by their tag."""

    def __init__(self, table):
        self.table = table

    def embed_texts(self, texts):
        return torch.stack([self.table[t] for t in texts]) if texts else torch.empty(0)

    def embed_images(self, images):
        return torch.stack([self.table[im] for im in images]) if images else torch.empty(0)


def test_the_samples_own_ground_truth_is_retrieved_and_ranks_first(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    d, n = 16, 40
    img, txt = unit_rows(rng, n, d), unit_rows(rng, n, d)
    triple_vecs = unit_rows(rng, n, d)
    table = {}
    items = []
    for i in range(n):
        tr = Triple(f"thing{i}", "near", f"place{i}")
        table[f"place{i} near thing{i}"] = torch.from_numpy(triple_vecs[i])
        table[f"img{i}"] = torch.from_numpy(img[i])
        table[f"text{i}"] = torch.from_numpy(txt[i])
        items.append({"sample_id": f"d:{i}", "index": i, "image": f"img{i}", "text": f"text{i}",
                      "triples": [tr.as_dict()]})
    scorer = TableScorer(table)
    graph = graph_embeddings(scorer.embed_texts, [[Triple(**it["triples"][0])] for it in items], d)
    cfg = PipelineConfig(rank=RankConfig(retrieve_k=3))
    write_corpus(cfg, tmp_path, items, img, txt, graph)
    ret = Retriever.load(cfg, tmp_path)
    # retrieved images are read from disk; here their "path" is the embedding tag
    monkeypatch.setattr("kbridge.engine.data.load_image", lambda p: str(p))
    # sample 7 lost its image: its text and triples are those of corpus item 7 (its ground truth)
    # sample 12 lost its text: its image and triples are those of item 12
    s_img = Sample("q:7", 100, "query7", None, "image")
    s_txt = Sample("q:12", 101, None, "queryimg12", "text")
    table["query7"], table["queryimg12"] = torch.from_numpy(img[7]), torch.from_numpy(txt[12])
    kns = [Knowledge([], "", [Triple("thing7", "near", "place7")]),
           Knowledge([], "", [Triple("place12", "near", "thing12")])]
    found = ret.candidates(scorer, [s_img, s_txt], kns)
    assert [c.id for c in found[0]][0] == "retrieved-7" and len(found[0]) == 3
    assert [c.id for c in found[1]][0] == "retrieved-12"
    assert all(c.source == "retrieved" for cs in found for c in cs)
    assert found[0][0].image == "img7" and found[1][0].text == "text12"
    # joined with generated candidates, the ground truth wins the ranking
    table["gen"] = torch.from_numpy(unit_rows(rng, 1, d)[0])
    table["gen text"] = table["gen"]
    cands = [[Candidate("c0", "generated", image="gen")] + found[0],
             [Candidate("c0", "generated", text="gen text")] + found[1]]
    _, best = rank_batch(scorer, cfg.rank, [s_img, s_txt], kns, cands)
    assert best == ["retrieved-7", "retrieved-12"]


def test_an_index_from_another_scorer_is_not_used(tmp_path, caplog):
    import logging

    from kbridge.engine.models import load_retriever

    cfg = PipelineConfig()
    x = unit_rows(np.random.default_rng(5), 3, 8)
    write_corpus(cfg, tmp_path / "index", [{"index": i, "text": "t", "image": None, "triples": []} for i in range(3)],
                 x, x, x)
    assert load_retriever(cfg, tmp_path) is not None
    other = PipelineConfig(rank=RankConfig(semantic="clip+blip"))
    with caplog.at_level(logging.WARNING, logger="kbridge.engine.models"):
        assert load_retriever(other, tmp_path) is None
    assert "another scorer" in caplog.text


def test_retrieval_off_when_k_is_zero(tmp_path):
    cfg = PipelineConfig(rank=RankConfig(retrieve_k=0))
    from kbridge.engine.models import load_retriever

    assert load_retriever(cfg, tmp_path) is None
    assert load_retriever(PipelineConfig(), tmp_path) is None  # no index built


def test_build_index_on_the_demo_set(engine, tmp_path):
    summary = engine.build_index(out=tmp_path, limit=2)
    assert summary["items"] + len(summary["errors"]) == 2 and summary["kind"] == "flat"
    for f in ("image.faiss", "text.faiss", "items.jsonl", "meta.json"):
        assert (tmp_path / "index" / f).exists()
    from kbridge.engine import data as D
    from kbridge.engine.models import load_retriever

    ret = load_retriever(engine.cfg, tmp_path)
    ds = D.open_dataset(None)
    i = D.incomplete_indices(ds)[0]
    s = D.load_sample(ds, i, ds.missing[i])
    found = ret.candidates(engine.models(need_diffusion=False).scorer, [s], [Knowledge([], "", [])])
    assert 1 <= len(found[0]) <= min(engine.cfg.rank.retrieve_k, summary["items"])
    assert all((c.image is not None) if s.missing == "image" else c.text for c in found[0])


def test_index_cli_is_registered_and_reports_errors_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from kbridge.cli.app import app

    r = CliRunner().invoke(app, ["index", "build", "--help"])
    assert r.exit_code == 0 and "--out" in r.output
    r = CliRunner().invoke(app, ["index", "build", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2


def _fake_faiss(monkeypatch, gpus=4):
    import numpy as np

    seen = {"clones": [], "temp": []}

    class Res:
        def setTempMemory(self, n):
            seen["temp"].append(n)

    class Flat:
        def __init__(self, d):
            self.d, self.ntotal = d, 0

        def add(self, x):
            self.ntotal += len(x)

    class IVFPQ(Flat):
        def __init__(self, q, d, lists, m, bits, metric):
            super().__init__(d)
            self.pq = types.SimpleNamespace(M=m)

        def train(self, x):
            pass

    def to_gpu(res, dev, index, opts):
        seen["clones"].append((res, dev, opts.useFloat16))
        return index

    fake = types.SimpleNamespace(IndexFlatIP=Flat, IndexIVFPQ=IVFPQ, METRIC_INNER_PRODUCT=0,
                                 StandardGpuResources=Res, get_num_gpus=lambda: gpus, index_cpu_to_gpu=to_gpu,
                                 GpuClonerOptions=lambda: types.SimpleNamespace(useFloat16=False),
                                 downcast_index=lambda i: i)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    from kbridge.engine.retrieve import index

    monkeypatch.setattr(index, "_RESOURCES", {})
    return seen, np.random.default_rng(0).standard_normal((50, 16)).astype("float32")


def test_faiss_searches_on_cpu_unless_asked_then_on_the_stage_gpu(monkeypatch):
    from kbridge.engine.retrieve.index import GPU_TEMP_BYTES, EmbeddingIndex, IndexUnavailable

    seen, x = _fake_faiss(monkeypatch)
    EmbeddingIndex.build(x, "flat")  # default: the CPU, even with GPUs visible
    assert seen["clones"] == []
    EmbeddingIndex.build(x, "flat", use_gpu=True, device="cuda:2")
    EmbeddingIndex.build(x, "flat", use_gpu=True, device="cuda:2")
    (r1, d1, _), (r2, d2, _) = seen["clones"]
    assert d1 == d2 == 2 and r1 is r2 and seen["temp"] == [GPU_TEMP_BYTES]  # one shared, small resource
    with pytest.raises(IndexUnavailable, match="cuda:7"):
        EmbeddingIndex.build(x, "flat", use_gpu=True, device="cuda:7")


def test_ivfpq_goes_to_the_gpu_only_as_faiss_gpu_accepts_it(monkeypatch):
    """Real faiss-cpu IVF-PQ indexes (their ``pq.M`` / ``pq.nbits`` as faiss built them), the GPU
    copy stubbed (faiss-cpu has none): faiss-gpu's ``IVFPQ::isSupportedPQCodeLength`` accepts code
    sizes 1, 2, 3, 4, 8, 12, …, 48, 56, 64, 96 only (faiss/gpu/impl/IVFPQ.cu) and, without the
    interleaved layout, 8 bits per code only (GpuIndexIVFPQ). Anything else stays on the CPU."""
    import numpy as np

    faiss = pytest.importorskip("faiss")
    from kbridge.engine.retrieve import index as I

    clones = []
    monkeypatch.setattr(I, "gpu_count", lambda: 2)
    monkeypatch.setattr(I, "_RESOURCES", {})
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: type("R", (), {"setTempMemory": lambda s, b: None})(),
                        raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", lambda: type("O", (), {})(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, dev, idx, opts: clones.append(
        (faiss.downcast_index(idx).pq.M, opts.useFloat16)) or idx, raising=False)
    rng = np.random.default_rng(0)

    def build(n, d):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return I.EmbeddingIndex.build(x / np.linalg.norm(x, axis=1, keepdims=True), "ivfpq", use_gpu=True,
                                      device="cuda:1")

    small = build(120, 16)  # 120 vectors: fewer than 8 bits per code (k-means' 39 points per centroid)
    assert faiss.downcast_index(small.index).pq.nbits < 8 and clones == []

    def made(d, m, bits):  # faiss' own IndexIVFPQ (untrained: only its shape is read)
        return I.EmbeddingIndex(faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, 1, m, bits), "ivfpq", d)._to_gpu(
            True, "cuda:1")

    made(48, 6, 8)  # 6 bytes per code: not a size faiss-gpu supports
    made(64, 8, 4)  # 4 bits per code
    assert clones == []
    made(64, 8, 8)
    made(512, 64, 8)  # only with float16 lookup tables
    assert clones == [(8, False), (64, True)]
    assert I.gpu_ivfpq_refusal(6, 8) and I.gpu_ivfpq_refusal(8, 4) and I.gpu_ivfpq_refusal(96, 8) is None
