import json

import numpy as np
import pytest
from PIL import Image

from kbridge.engine import data as D
from kbridge.engine.types import SampleError


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "1", "P", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_every_image_mode_becomes_8bit_rgb(mode):
    rng = np.random.default_rng(0)
    if mode in ("I;16", "I", "F"):
        arr = rng.integers(0, 60000, (9, 7)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])
        img = Image.fromarray(arr, mode if mode != "I;16" else None)
        if mode == "I;16":
            img = Image.fromarray(arr)
    else:
        img = Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)).convert(mode)
    out = D.normalize_image(img)
    assert out.mode == "RGB" and out.size == (7, 9)
    assert np.asarray(out).dtype == np.uint8


def test_16bit_is_rescaled_to_full_range():
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    out = np.asarray(D.normalize_image(Image.fromarray(arr)))
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255 and out[0, 1, 0] == round(1000 / 4000 * 255)


def test_transparent_pixels_composite_on_white():
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (10, 20, 30, 255))
    out = np.asarray(D.normalize_image(img))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [10, 20, 30]


def test_text_rules_per_format():
    rec = {"captions": ['First "one".', "Second."]}
    assert D.text_of(rec, "coco") == 'First "one".'
    assert D.text_of(rec, "mmimdb") == 'First "one". Second.'
    assert D.text_of(rec, "iuxray") == "First one.\nSecond."


def _dataset(tmp_path, n_labels=80, items=None):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "images" / "ok.jpg")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image")
    items = items or [
        {"file_name": "images/ok.jpg", "labels": ["a"], "captions": ["a red square"]},
        {"file_name": "images/missing.jpg", "labels": [], "captions": ["gone"]},
        {"file_name": "images/broken.jpg", "labels": [], "captions": ["broken"]},
        {"file_name": "images/ok.jpg", "labels": [], "captions": [""]},
    ]
    (tmp_path / "metadata.json").write_text(json.dumps(items))
    labels = [f"l{i}" for i in range(n_labels)]
    (tmp_path / "category.json").write_text(json.dumps({"label_name": labels}))
    return tmp_path


@pytest.mark.parametrize("n, fmt", [(80, "coco"), (27, "mmimdb"), (105, "iuxray"), (12, None)])
def test_format_detection(tmp_path, n, fmt):
    root = _dataset(tmp_path, n)
    if fmt:
        assert D.detect_format(root) == fmt
    else:
        with pytest.raises(D.DataError, match="--format"):
            D.detect_format(root)


def test_per_sample_errors_name_the_sample_and_problem(tmp_path):
    ds = D.open_dataset(_dataset(tmp_path), name="toy")
    assert D.load_sample(ds, 0, "text").image.size == (8, 8)
    with pytest.raises(SampleError, match="toy:1: image file not found"):
        D.load_sample(ds, 1, "text")
    with pytest.raises(SampleError, match="toy:2: unreadable image"):
        D.load_sample(ds, 2, "text")
    with pytest.raises(SampleError, match="toy:3: text is empty"):
        D.load_sample(ds, 3, "image")
    with pytest.raises(SampleError, match="toy:9: index 9 is past the end"):
        D.load_sample(ds, 9, "image")
    # only the available modality is read: a missing image file is fine when the image is missing
    assert D.load_sample(ds, 1, "image").text == "gone"


def test_missing_config_roundtrip_and_counts():
    cfg = D.make_missing(100, "mixed", 0.7, seed=3)
    assert cfg["num_missing"] == 70 and len(cfg["missing_details"]) == 70 and cfg["total"] == 100
    flags = list(cfg["missing_details"].values())
    assert flags.count([0, 1]) == 35 and flags.count([1, 0]) == 35
    assert D.make_missing(100, "mixed", 0.7, seed=3) == cfg  # reproducible
    only_image = D.make_missing(10, "image", 0.5)
    assert only_image["num_missing"] == 5
    assert all(v == [1, 0] for v in only_image["missing_details"].values())
    assert D.make_missing(10, "mixed", 0.0)["missing_details"] == {}


def test_malformed_missing_configs_fail_clearly(tmp_path):
    for i, bad in enumerate(["{", json.dumps({"x": 1}), json.dumps({"missing_details": {"a": [0, 1]}})]):
        p = tmp_path / f"m{i}.json"
        p.write_text(bad)
        with pytest.raises(D.DataError, match="malformed missing config"):
            D.read_missing_config(p, 10)


def test_demo_set_is_bundled_small_and_mixed():
    ds = D.open_dataset()
    assert ds.name == "demo" and len(ds) == 12
    assert set(ds.missing.values()) == {"image", "text"}
    size = sum(p.stat().st_size for p in D.DEMO_DIR.rglob("*") if p.is_file())
    assert size < 2 * 1024 * 1024
    for i in range(len(ds)):
        s = D.load_sample(ds, i, None)
        assert s.image.mode == "RGB" and s.text
