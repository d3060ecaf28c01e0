"""Inputs: every unusual or bad sample of the matrix in one synthetic dataset, through ONE shared
``kbridge run`` (subprocess, fake LMM over loopback HTTP). Each row's expected outcome:

- *completes*: a results line;
- *per-sample error*: one ``error:`` line naming the sample and the problem on screen, the same in
  ``errors.jsonl``; the other samples complete and the run exits 0;
- *dataset error* (test_dataset_errors.py): one ``error:`` line, exit 2.

The dataset keeps its metadata in ``trainset.json`` (read with ``--metadata``) and has no
``category.json`` (``--format`` is given). The pixel cap is lowered to 100 M pixels by config so
that an image above Pillow's own limit (89.5 M) completes and one above the cap fails cheaply.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kbridge.engine import data as D
from kbridge.engine import inputs as IN
from tests.reliability.relib import check_run_dir, error_lines, kb, write_config

CAP = 100_000_000
RGB = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)


def _png(p: Path, mode: str = "RGB", size=None):
    img = Image.fromarray(RGB)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img.convert("L"), dtype=np.uint16) * 200))
    elif mode == "PA":
        img = img.convert("RGBA").convert("P")
        img.info["transparency"] = 0
    elif mode != "RGB":
        img = img.convert(mode)
    if size:
        img = Image.new("L", size, 128)
    img.save(p, format="JPEG" if p.suffix == ".jpg" else "PNG",
             **({"transparency": 0} if mode == "PA" else {}))


def _exif_jpeg(p: Path):
    img = Image.fromarray(RGB)  # 32 wide, 24 high; orientation 6: shown rotated, 24 wide, 32 high
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(p, format="JPEG", exif=exif)


def _truncated_jpeg(p: Path):
    _png(p)
    p.write_bytes(p.read_bytes()[:200])


# (row id, record, image maker or None, flags [text, image], expected, what the error says)
CASES = [
    ("1x1 image", {"file_name": "one.png"}, lambda p: Image.new("RGB", (1, 1), (9, 9, 9)).save(p), [0, 1], "completes", None),
    ("image above Pillow's limit, under the cap", {"file_name": "big.png"}, lambda p: _png(p, size=(10_000, 9_500)), [0, 1], "completes", None),
    ("CMYK JPEG", {"file_name": "cmyk.jpg"}, lambda p: _png(p, "CMYK"), [0, 1], "completes", None),
    ("16-bit PNG", {"file_name": "deep.png"}, lambda p: _png(p, "I;16"), [0, 1], "completes", None),
    ("palette PNG with alpha", {"file_name": "pal.png"}, lambda p: _png(p, "PA"), [0, 1], "completes", None),
    ("EXIF-rotated JPEG", {"file_name": "rot.jpg"}, _exif_jpeg, [0, 1], "completes", None),
    ("100k-character text", {"captions": ["word " * 20_000]}, None, [1, 0], "completes", None),
    ("caption list that is a string", {"captions": "a dog runs on the grass"}, None, [1, 0], "completes", None),
    ("non-ASCII text", {"captions": ["Ein Hund läuft über die Wiese — 草地上的狗"]}, None, [1, 0], "completes", None),
    ("labels of mixed types", {"file_name": "lab.png", "labels": [1, "dog", 2.5, None]}, lambda p: _png(p), [0, 1], "completes", None),
    ("truncated JPEG", {"file_name": "cut.jpg"}, _truncated_jpeg, [0, 1], "error", "unreadable image"),
    ("zero-byte file", {"file_name": "empty.png"}, lambda p: p.write_bytes(b""), [0, 1], "error", "unreadable image"),
    ("text file named .jpg", {"file_name": "notes.jpg"}, lambda p: p.write_text("not an image\n"), [0, 1], "error", "unreadable image"),
    ("missing file", {"file_name": "gone.png"}, None, [0, 1], "error", "image file not found"),
    ("image above the pixel cap", {"file_name": "huge.png"}, lambda p: _png(p, size=(10_500, 10_000)), [0, 1], "error", "above the cap"),
    ("empty text", {"captions": [""]}, None, [1, 0], "error", "text is empty"),
    ("whitespace-only text", {"captions": ["  \n\t "]}, None, [1, 0], "error", "text is empty"),
    ("non-UTF-8 bytes in the text", {"captions": ["@BADBYTES@"]}, None, [1, 0], "error", "not valid UTF-8"),
    ("record without file_name", {"captions": ["x"]}, None, [0, 1], "error", "no file_name"),
    ("both modalities missing", {"file_name": "one.png"}, None, [0, 0], "error", "both modalities"),
    ("flags not 0/1", {"file_name": "one.png"}, None, [2, 1], "error", "not two 0/1 values"),
    ("file_name with .. leaving the root", {"file_name": "../outside.png"}, None, [0, 1], "error", "leaves the dataset directory"),
    ("absolute file_name outside the root", {"file_name": "@OUTSIDE@"}, None, [0, 1], "error", "leaves the dataset directory"),
]
PAST_END = "index past the dataset"


pytestmark = pytest.mark.slow  # every test reads one kbridge run in a subprocess over the malformed inputs


@pytest.fixture(scope="module")
def shared(fake_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inputs")
    root = tmp / "ds"
    root.mkdir()
    _png(tmp / "outside.png")  # exists, so only the refusal can stop it
    items, details = [], {}
    for i, (_, rec, make, flags, _, _) in enumerate(CASES):
        rec = {"labels": [3], "captions": [f"caption of sample {i}"], **rec}
        if rec.get("file_name") == "@OUTSIDE@":
            rec["file_name"] = str(tmp / "outside.png")
        if make:
            make(root / rec["file_name"])
        items.append(rec)
        details[str(i)] = flags
    details[str(len(items) + 5)] = [0, 1]  # the index past the dataset
    raw = json.dumps(items, ensure_ascii=False).encode().replace(b"@BADBYTES@", b"caf\xe9 \xff\xfe")
    (root / "trainset.json").write_bytes(raw)
    listed = sorted(int(k) for k in details)
    miss = {"missing_details": details, "missing_indices": listed[1:] + [listed[1]]}  # one left out, one repeated
    (tmp / "missing.json").write_text(json.dumps(miss))
    cfg = write_config(tmp / "run.toml", fake_server.url, rows_in_flight=4, max_pixels=CAP)
    r = kb("run", "--data", root, "--format", "coco", "--metadata", "trainset.json", "--missing", tmp / "missing.json",
           "--config", cfg, "--out", tmp / "out")
    errors = [json.loads(ln) for ln in (tmp / "out" / "errors.jsonl").read_text().splitlines()]
    return {"root": root, "rc": r.returncode, "stderr": r.stderr, "rows": check_run_dir(tmp / "out"), "errors": errors,
            "n": len(items)}


def test_the_shared_run_exits_0_with_one_line_per_bad_sample(shared):
    assert shared["rc"] == 0, shared["stderr"][-3000:]
    n_err = sum(1 for c in CASES if c[4] == "error") + 1
    assert len(error_lines(shared["stderr"])) == n_err == len(shared["errors"]), shared["stderr"]
    assert len(shared["rows"]) + len(shared["errors"]) == len(CASES) + 1  # no sample lost
    warn = [ln for ln in shared["stderr"].splitlines() if "missing_indices disagrees" in ln]
    assert len(warn) == 1 and "repeated [" in warn[0] and "not listed [0]" in warn[0], warn
    assert not (shared["root"] / "category.json").exists()


@pytest.mark.parametrize("i", range(len(CASES)), ids=[c[0] for c in CASES])
def test_input_row(shared, i):
    name, rec, _, flags, expected, says = CASES[i]
    sid = f"ds:{i}"
    if expected == "completes":  # ds:0 is also the sample missing_indices left out: the details won
        assert sid in shared["rows"], [e for e in shared["errors"] if e["sample_id"] == sid]
        assert shared["rows"][sid]["best"] is not None
    else:
        [err] = [e for e in shared["errors"] if e["sample_id"] == sid]
        assert says in err["error"] and sid not in shared["rows"], err
        assert any(ln.startswith(f"error: {sid}: ") and says in ln for ln in shared["stderr"].splitlines())


def test_input_row_index_past_the_dataset(shared):
    sid = f"ds:{shared['n'] + 5}"
    [err] = [e for e in shared["errors"] if e["sample_id"] == sid]
    assert "past the end of the dataset" in err["error"]


def test_loaded_images_are_downscaled_rotated_and_texts_truncated(shared):
    ds = D.open_dataset(shared["root"], "coco", metadata="trainset.json", max_pixels=CAP)
    big = D.load_sample(ds, 1, "text").image
    assert big.width * big.height <= IN.WORK_PIXELS and abs(big.width / big.height - 10_000 / 9_500) < 0.01
    assert D.load_sample(ds, 5, "text").image.size == (24, 32)  # EXIF orientation 6 applied
    assert len(D.load_sample(ds, 6, "image").text) == IN.MAX_TEXT_CHARS
    assert D.load_sample(ds, 9, "text").labels == [1, "dog", 2.5, None]
    assert D.load_sample(ds, 7, "image").text == "a dog runs on the grass"
