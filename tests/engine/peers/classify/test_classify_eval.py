"""``kbridge classify train`` and ``classify eval`` end to end on synthetic data, with and without
a completed kbridge run (results.jsonl, and the --export-completed layout)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kbridge.cli.app import app

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
"""As in conftest.make_colour_dataset (checked by test_colours_match_the_dataset)."""


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(colour_sets, tmp_path_factory):
    """The tiny DCP twin, prompts and a 3-class head fitted for 200 steps on the colour task (held-out
    accuracy 1.0; 180 and 240 steps give 1.0 too, where 60-120 steps give 0.80-0.93)."""
    (train_dir, train_missing), _ = colour_sets
    out = tmp_path_factory.mktemp("trained") / "model"
    r = _cli("classify", "train", "--model", "tiny", "--task", "food101", "--data", train_dir,
             "--missing", train_missing, "--out", out, "--steps", 200, "--lr", 3e-3, "--batch-size", 8)
    assert r.exit_code == 0, r.output
    assert "for 200 steps (33.3 epochs) on 48 samples" in r.output and "→" in r.output
    assert not (out / "train-state.pt").exists()   # the resumable state goes once training has finished
    return out


def _flat(results: dict) -> dict:
    return {(c, g, k): v for c, groups in results.items() for g, ms in groups.items() for k, v in ms.items()}


def _eval_json(*args) -> dict:
    r = _cli("classify", "eval", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_colours_match_the_dataset(colour_sets):
    (train_dir, _), _ = colour_sets
    assert json.loads((train_dir / "category.json").read_text())["label_name"] == list(COLOURS)


def test_train_reaches_90_percent_on_held_out_samples(trained, colour_sets):
    _, (test_dir, test_missing) = colour_sets
    rep = _eval_json("--model", trained, "--data", test_dir, "--missing", test_missing)
    res = rep["results"]["missing"]
    assert res["all"]["n"] == 30 and res["text missing"]["n"] == 9 and res["image missing"]["n"] == 9
    assert res["all"]["accuracy"] >= 0.9
    assert rep["unmapped_labels"] == {} and rep["unscored"] == 0


def _fake_run(run: Path, test_dir: Path, skip: int) -> dict:
    """A kbridge run over the test set's incomplete samples: the right caption / the right colour
    as the best candidate, except that sample ``skip`` has no result."""
    meta = json.loads((test_dir / "metadata.json").read_text())
    details = json.loads((test_dir / "missing.json").read_text())["missing_details"]
    lines = []
    for key, flags in sorted(details.items(), key=lambda kv: int(kv[0])):
        i = int(key)
        if i == skip:
            continue
        colour = meta[i]["labels"][0]
        if flags == [0, 1]:   # text missing
            cand = {"id": "c0", "source": "generated", "text": f"a {colour} photo", "scores": {"total": 0.5}}
            kind = "text"
        else:
            rel = f"images/{test_dir.name}/{i}/c0.png"
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 48), COLOURS[colour]).save(run / rel)
            cand = {"id": "c0", "source": "generated", "image": rel, "scores": {"total": 0.5}}
            kind = "image"
        lines.append(json.dumps({"sample_id": f"{test_dir.name}:{i}", "index": i, "missing": kind,
                                 "candidates": [cand], "best": "c0"}))
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    return details


def test_eval_with_a_completed_run_and_its_export(trained, colour_sets, tmp_path):
    from kbridge.engine.peers.classify.data import encode_images, encode_texts
    from kbridge.engine.peers.classify.model import load, load_tokenizer
    from kbridge.engine.data import open_dataset
    from kbridge.engine.store import export_completed

    _, (test_dir, test_missing) = colour_sets
    details = _fake_run(tmp_path / "run", test_dir, skip=-1)
    rep = _eval_json("--model", trained, "--data", test_dir, "--missing", test_missing,
                     "--completed", tmp_path / "run")
    assert set(rep["results"]) == {"missing", "completed"}
    assert any("18 missing modalities filled" in n for n in rep["notes"])

    # independent check of the completed condition: feed the filled modality with flag 0 by hand
    m, tok = load(trained), load_tokenizer(trained)
    meta = json.loads((test_dir / "metadata.json").read_text())
    text_missing = [int(k) for k, f in details.items() if f == [0, 1]]
    texts = [f"a {meta[i]['labels'][0]} photo" for i in text_missing]
    imgs = [Image.open(test_dir / meta[i]["file_name"]) for i in text_missing]
    x_px = encode_images(imgs, m.cfg.image_size)
    with torch.no_grad():
        logits = m(x_px, encode_texts(tok, texts, 77), torch.zeros(len(texts), dtype=torch.long))
    truth = torch.tensor([list(COLOURS).index(meta[i]["labels"][0]) for i in text_missing])
    want = float((logits.argmax(-1) == truth).float().mean())
    assert rep["results"]["completed"]["text missing"]["accuracy"] == pytest.approx(want, abs=1e-6)

    # the same completions through `kbridge run --export-completed`'s layout give the same numbers
    ds = open_dataset(test_dir, fmt="coco", missing=test_missing)
    export_completed(tmp_path / "run", ds, tmp_path / "export")
    rep2 = _eval_json("--model", trained, "--data", test_dir, "--missing", test_missing,
                      "--completed", tmp_path / "export")
    assert _flat(rep2["results"]) == pytest.approx(_flat(rep["results"]), abs=1e-6)


def test_unfilled_samples_are_scored_as_missing_and_reported(trained, colour_sets, tmp_path):
    _, (test_dir, test_missing) = colour_sets
    details = _fake_run(tmp_path / "run", test_dir, skip=min(int(k) for k in json.loads(test_missing.read_text())["missing_details"]))
    rep = _eval_json("--model", trained, "--data", test_dir, "--missing", test_missing, "--completed", tmp_path / "run")
    assert any(f"{len(details) - 1} missing modalities filled" in n for n in rep["notes"])
    assert any("1 incomplete samples have no completion" in n for n in rep["notes"])


def _mmimdb_set(root: Path) -> tuple[Path, Path]:
    (root / "images").mkdir(parents=True)
    meta = []
    for i in range(6):
        Image.new("RGB", (36, 36), (40 * i, 80, 200 - 30 * i)).save(root / "images" / f"{i}.png")
        labels = ["Drama", "Comedy"] if i % 2 else ["Horror", "Reality-TV"]   # Reality-TV: not a head class
        meta.append({"file_name": f"images/{i}.png", "labels": labels, "captions": ["a man", "in a city"]})
    (root / "metadata.json").write_text(json.dumps(meta))
    (root / "category.json").write_text(json.dumps({"label_name": ["Drama", "Comedy", "Horror", "Reality-TV"]}))
    details = {"0": [0, 1], "3": [1, 0]}
    (root / "m.json").write_text(json.dumps({"missing_details": details}))
    return root, root / "m.json"


def test_mmimdb_unmapped_labels_reported_and_onnx_matches_torch(tiny_dcp, tmp_path):
    data, missing = _mmimdb_set(tmp_path / "mm")
    r = _cli("classify", "eval", "--model", "tiny", "--data", data, "--missing", missing)
    assert r.exit_code == 0, r.output
    assert "unmapped labels" in r.output and "Reality-TV ×3" in r.output
    torch_rep = _eval_json("--model", "tiny", "--data", data, "--missing", missing)
    onnx_rep = _eval_json("--model", "tiny", "--data", data, "--missing", missing, "--backend", "onnx")
    assert torch_rep["unmapped_labels"] == {"Reality-TV": 3}
    res = torch_rep["results"]["missing"]
    assert (res["all"]["n"], res["text missing"]["n"], res["image missing"]["n"], res["complete"]["n"]) == (6, 1, 1, 4)
    assert _flat(onnx_rep["results"]) == pytest.approx(_flat(torch_rep["results"]), abs=1e-6)


def test_nothing_scorable_is_one_line_and_null_never_a_zero_metric(tiny_dcp, tmp_path):
    """No label maps to the head (the demo set on the tiny twin): one line saying so, null metrics
    in JSON, no 0.00 F1; a sample with at least one mapped label stays scorable."""
    from kbridge.engine.peers.classify.evaluate import evaluate

    data, missing = _mmimdb_set(tmp_path / "mm")
    meta = json.loads((data / "metadata.json").read_text())
    for m in meta:
        m["labels"] = ["News", "Reality-TV"]
    (data / "metadata.json").write_text(json.dumps(meta))
    r = _cli("classify", "eval", "--model", "tiny", "--data", data, "--missing", missing)
    assert r.exit_code == 0, r.output
    assert "nothing scorable: none of the 6 samples has a label among the head's 23 classes" in r.output
    assert "0.00" not in r.output and "f1_macro" not in r.output
    assert "News ×6" in r.output and "Reality-TV ×6" in r.output
    rep = evaluate(tiny_dcp, data, missing).to_json()
    assert rep["nothing_scorable"].startswith("nothing scorable") and rep["unscored"] == 6
    assert all(v is None for (c, g, k), v in _flat(rep["results"]).items() if k != "n")
    assert {v for (c, g, k), v in _flat(rep["results"]).items() if k == "n"} == {0}
    meta[2]["labels"] = ["News", "Drama"]   # one mapped label: scored, the unknown one reported
    (data / "metadata.json").write_text(json.dumps(meta))
    rep = evaluate(tiny_dcp, data, missing).to_json()
    assert rep["nothing_scorable"] is None and rep["unscored"] == 5
    assert rep["results"]["missing"]["all"]["n"] == 1 and rep["results"]["missing"]["all"]["f1_macro"] is not None


def test_reference_arrow_file_expands_plots_and_reads_missing_table(tiny_dcp, tmp_path):
    import io

    import pyarrow as pa

    from kbridge.engine.peers.classify.data import read_dataset
    from kbridge.engine.peers.classify.evaluate import evaluate

    def jpeg(rgb):
        b = io.BytesIO()
        Image.new("RGB", (30, 30), rgb).save(b, format="JPEG")
        return b.getvalue()

    label = [[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1] + [0] * 8, [0] * 22 + [1]]   # Drama+War; Film-Noir
    table = pa.table({"image": [jpeg((200, 0, 0)), jpeg((0, 0, 200))], "plots": [["p one", "p two"], ["p three"]],
                      "label": label, "image_id": ["a", "b"], "split": ["test", "test"]})
    path = tmp_path / "mmimdb_test.arrow"
    with pa.OSFile(str(path), "wb") as f, pa.RecordBatchFileWriter(f, table.schema) as w:
        w.write_table(table)
    torch.save(torch.tensor([1.0, 0.0]), tmp_path / "mmimdb_test_missing_both_07.pt")
    ds = read_dataset(tmp_path, "mmimdb", tmp_path / "mmimdb_test_missing_both_07.pt", ())
    assert [(e.sample_id, e.text, e.flag, e.labels) for e in ds.examples] == [
        ("mmimdb_test:0.0", "p one", 1, ("Drama", "War")), ("mmimdb_test:0.1", "p two", 1, ("Drama", "War")),
        ("mmimdb_test:1.0", "p three", 0, ("Film-Noir",))]
    rep = evaluate(tiny_dcp, path, tmp_path / "mmimdb_test_missing_both_07.pt")
    assert rep.results["missing"]["text missing"]["n"] == 2 and rep.results["missing"]["all"]["n"] == 3


def test_bad_completed_directory_is_one_error_line(tiny_dcp, tmp_path):
    data, missing = _mmimdb_set(tmp_path / "mm")
    (tmp_path / "empty").mkdir()
    r = _cli("classify", "eval", "--model", "tiny", "--data", data, "--missing", missing, "--completed", tmp_path / "empty")
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "neither a kbridge run" in lines[0]


def test_rep_memories_and_alpha_train(colour_sets):
    """REP's learner gets gradients end to end (memories, the shared α, the head); the backbone
    stays frozen on food101."""
    from kbridge.engine.peers.classify.data import read_dataset
    from kbridge.engine.peers.classify.model import ensure_tiny, load, load_tokenizer
    from kbridge.engine.peers.classify.train import train, with_classes

    (train_dir, train_missing), _ = colour_sets
    d = ensure_tiny("rep", "food101")
    m, tok = with_classes(load(d), tuple(COLOURS)), load_tokenizer(d)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ds = read_dataset(train_dir, "food101", train_missing, m.cfg.class_names)
    res = train(m, ds.examples, tok, steps=30, lr=3e-3, batch_size=8)
    after = m.state_dict()
    assert res["loss_last"] < res["loss_first"]
    assert float(after["learner.residual_alpha"]) != float(before["learner.residual_alpha"])
    assert not torch.equal(after["learner.visual_memory_missing"], before["learner.visual_memory_missing"])
    for k in ("backbone.clip.visual_projection.weight", "backbone.vision_dyn_attn.in_proj_weight",
              "backbone.clip.text_model.encoder.layers.0.mlp.fc1.weight"):
        assert torch.equal(after[k], before[k]), k


def test_unreadable_image_names_the_sample(tiny_dcp, tmp_path):
    data, missing = _mmimdb_set(tmp_path / "mm")
    (data / "images" / "2.png").write_bytes(b"not a png")
    r = _cli("classify", "eval", "--model", "tiny", "--data", data, "--missing", missing)
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: mm:2: unreadable image")


def _one_line(r) -> str:
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.output
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_devices_paths_and_a_foreign_missing_config_are_one_line(tiny_dcp, tmp_path):
    """--device cuda without a GPU, an unknown device, a dataset that does not exist, and a missing
    config made for another dataset size (its ``total``) each give one error line."""
    data, missing = _mmimdb_set(tmp_path / "mm")
    base = ("classify", "eval", "--model", "tiny", "--data", data)
    assert "no CUDA GPU is available" in _one_line(_cli(*base, "--device", "cuda"))
    assert "unknown device 'bogus'" in _one_line(_cli(*base, "--device", "bogus"))
    assert "no CUDA GPU" in _one_line(_cli("classify", "train", "--model", "tiny", "--data", data, "--out",
                                           tmp_path / "t", "--steps", 1, "--device", "cuda:1"))
    assert "dataset not found" in _one_line(_cli("classify", "eval", "--model", "tiny", "--data", tmp_path / "no"))
    cfg = json.loads(Path(missing).read_text())
    n = len(json.loads((Path(data) / "metadata.json").read_text()))
    (tmp_path / "other.json").write_text(json.dumps(dict(cfg, total=n + 18)))
    line = _one_line(_cli(*base, "--missing", tmp_path / "other.json"))
    assert f"made for {n + 18} samples but the dataset has {n} rows" in line
