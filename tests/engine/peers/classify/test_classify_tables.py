"""The reference's missing tables (``classify missing-tables``) and ``classify eval``'s row in the
papers' layout over the text / image / both tables."""
from __future__ import annotations

import io
import random
import re

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kbridge.cli.app import app
from kbridge.engine.peers.classify.missing_tables import draw, table_name, write_tables


def _arrow(path, rows: int) -> None:
    import pyarrow as pa

    def jpeg(i):
        b = io.BytesIO()
        Image.new("RGB", (24, 24), (20 * (i % 12), 90, 200 - 15 * (i % 12))).save(b, format="JPEG")
        return b.getvalue()

    genres = [[int(j == i % 3) for j in range(23)] for i in range(rows)]   # Drama / Comedy / Romance
    table = pa.table({"image": [jpeg(i) for i in range(rows)], "plots": [[f"plot {i}"] for i in range(rows)],
                      "label": genres, "image_id": [str(i) for i in range(rows)], "split": ["x"] * rows})
    with pa.OSFile(str(path), "wb") as f, pa.RecordBatchFileWriter(f, table.schema) as w:
        w.write_table(table)


@pytest.fixture(scope="module")
def arrows(tmp_path_factory):
    d = tmp_path_factory.mktemp("arrows")
    for split, rows in (("mmimdb_train", 40), ("mmimdb_dev", 10), ("mmimdb_test", 20)):
        _arrow(d / f"{split}.arrow", rows)
    return d


@pytest.mark.parametrize("kind,ones,twos", [("text", 14, 0), ("image", 0, 14), ("both", 7, 7)])
def test_a_table_has_the_reference_counts(kind, ones, twos):
    t = draw(20, kind, 0.7, random.Random(0))
    assert t.dtype == torch.float32 and t.shape == (20,)
    assert (int((t == 1).sum()), int((t == 2).sum())) == (ones, twos)
    assert table_name("mmimdb_test", kind, 0.7) == f"mmimdb_test_missing_{kind}_07.pt"


def test_splits_draw_in_order_from_one_seeded_stream(arrows, tmp_path):
    """train, dev, test from one Random(seed): the test table is the third draw of that stream."""
    files = write_tables(arrows, "mmimdb", "both", 0.7, tmp_path, seed=0)
    assert [f.name for f in files] == ["mmimdb_train_missing_both_07.pt", "mmimdb_dev_missing_both_07.pt",
                                       "mmimdb_test_missing_both_07.pt"]
    rng = random.Random(0)
    want = [draw(n, "both", 0.7, rng) for n in (40, 10, 20)]
    for f, w in zip(files, want):
        assert torch.equal(torch.load(f, weights_only=True), w)
    # by hand for the test split: the 5th and 6th random.sample calls of the stream
    rng = random.Random(0)
    for n in (40, 10):
        rng.sample(rng.sample(range(n), int(n * 0.7)), int(int(n * 0.7) * 0.5))
    idx = rng.sample(range(20), 14)
    two = rng.sample(idx, 7)
    got = torch.load(files[2], weights_only=True)
    assert sorted(torch.nonzero(got == 2).flatten().tolist()) == sorted(two)
    assert sorted(torch.nonzero(got > 0).flatten().tolist()) == sorted(idx)
    other = write_tables(arrows, "mmimdb", "both", 0.7, tmp_path / "s1", seed=1)[2]
    assert not torch.equal(torch.load(other, weights_only=True), got)


def test_eval_prints_the_papers_row(arrows, tmp_path, tiny_dcp):
    tables = []
    for kind in ("text", "image", "both"):
        tables += ["--missing", write_tables(arrows, "mmimdb", kind, 0.7, tmp_path, seed=0)[2]]
    r = CliRunner().invoke(app, ["classify", "eval", "--model", "tiny", "--data", str(arrows / "mmimdb_test.arrow"),
                                 *map(str, tables)])
    assert r.exit_code == 0, r.output
    line = " ".join(r.output.split())
    m = re.search(r"paper row \(mmimdb F1-macro ×100, all samples\): text 0\.7: ([\d.]+) / image 0\.7: ([\d.]+) "
                  r"/ both 0\.7: ([\d.]+)", line)
    assert m, r.output
    r = CliRunner().invoke(app, ["classify", "eval", "--model", "tiny", "--data", str(arrows / "mmimdb_test.arrow"),
                                 *map(str, tables[:2]), "--json"])
    import json

    rep = json.loads(r.stdout)
    assert rep["results"]["missing"]["text missing"]["n"] == 14
    assert float(m.group(1)) == pytest.approx(100 * rep["results"]["missing"]["all"]["f1_macro"], abs=0.006)


def test_eval_reports_throughput_with_loader_workers(arrows, tiny_dcp):
    """Two loader processes decode while the model runs: the same logits as inline decoding, and
    the report's note gives rows/s."""
    from kbridge.engine.peers.classify.evaluate import evaluate

    table = write_tables(arrows, "mmimdb", "both", 0.7, arrows / "t", seed=0)[2]
    a = evaluate(tiny_dcp, arrows / "mmimdb_test.arrow", table, batch_size=4)
    b = evaluate(tiny_dcp, arrows / "mmimdb_test.arrow", table, batch_size=4, workers=2)
    assert a.results == b.results
    note = [n for n in b.notes if "rows/s" in n][0]
    assert re.match(r"missing: 20 rows in [\d.]+ s \([\d.]+ rows/s, batch 4, torch on cpu, 2 loader workers\)", note)
