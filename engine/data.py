"""Datasets in the reference layout, missing configs, the bundled demo set, image normalisation.

A dataset directory holds ``metadata.json`` (a list of ``{file_name, labels, captions}``),
``category.json`` (``label_name``, ``id2label``, ``label2id``) and the images, with ``file_name``
relative to the directory (or to ``images/``). Samples are keyed ``<dataset name>:<index>``.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kbridge.engine import inputs as IN
from kbridge.engine.types import Sample, SampleError
from kbridge.engine.errors import KbridgeError

DEMO_DIR = Path(__file__).parent / "demo"
FORMATS = ("coco", "mmimdb", "iuxray")
_LABEL_COUNTS = {80: "coco", 27: "mmimdb", 105: "iuxray"}
METADATA_NAMES = ("metadata.json", "train.json", "data.json")


class DataError(KbridgeError, ValueError):
    """The dataset as a whole cannot be read (per-sample problems are SampleErrors)."""


@dataclass(frozen=True)
class Dataset:
    name: str
    root: Path
    format: str
    items: list  # the raw metadata records
    missing: dict  # the parsed missing config
    bad: dict = field(default_factory=dict)
    """Missing-config entries that fail their own sample: {index: why} (see inputs.parse_missing)."""
    max_pixels: int = IN.DEFAULT_MAX_PIXELS

    def __len__(self) -> int:
        return len(self.items)


def normalize_image(img: Image.Image) -> Image.Image:
    """Any mode (RGBA, LA, P, 1, L, I;16, I, F, CMYK, YCbCr) and orientation → 8-bit RGB."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        img = Image.fromarray(a.round().astype(np.uint8), "L")
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("RGB")


def load_image(path: Path, max_pixels: int = IN.DEFAULT_MAX_PIXELS) -> Image.Image:
    return IN.open_capped(path, max_pixels, normalize_image)


def text_of(record: dict, fmt: str) -> str:
    """The per-dataset text rule: COCO takes the first caption, MM-IMDb joins all (the plot),
    IU X-Ray joins impression and findings with a newline and drops literal quotes."""
    caps = record.get("captions") or []
    if isinstance(caps, str):
        caps = [caps]
    caps = [str(c) for c in caps if c is not None]
    if fmt == "coco":
        text = caps[0] if caps else ""
    elif fmt == "mmimdb":
        text = " ".join(caps)
    else:
        text = "\n".join(c.replace('"', "").strip() for c in caps)
    return text.strip()


def detect_format(root: Path) -> str:
    cat = root / "category.json"
    if cat.exists():
        try:
            n = len(json.loads(cat.read_text()).get("label_name", []))
        except (ValueError, AttributeError) as e:
            raise DataError(f"{cat}: not a valid category.json ({e})") from e
        if n in _LABEL_COUNTS:
            return _LABEL_COUNTS[n]
    raise DataError(f"cannot detect the dataset format of {root}: pass --format ({'|'.join(FORMATS)})")


def _metadata_file(root: Path, metadata: str | Path | None = None) -> Path:
    if metadata is not None:
        p = Path(metadata) if Path(metadata).exists() else root / metadata
        if not p.is_file():
            raise DataError(f"metadata file {metadata} does not exist")
        return p
    for name in METADATA_NAMES:
        if (root / name).exists():
            return root / name
    raise DataError(f"{root}: no metadata file (looked for {', '.join(METADATA_NAMES)})")


def read_missing_config(path: Path, total: int) -> dict:
    """Parse and check a reference missing config; returns ``{index: "image"|"text"}``."""
    return read_missing(path, total)[0]


def read_missing(path: Path, total: int) -> tuple[dict, dict]:
    """``({index: "image"|"text"}, {index: why that entry fails its sample})``."""
    try:
        return IN.parse_missing(json.loads(Path(path).read_text()), total)
    except (OSError, ValueError) as e:
        raise DataError(f"malformed missing config {path}: {e}") from e


def open_dataset(root: str | Path | None = None, fmt: str | None = None, missing: str | Path | None = None,
                 name: str | None = None, metadata: str | Path | None = None,
                 max_pixels: int = IN.DEFAULT_MAX_PIXELS) -> Dataset:
    """Open a dataset directory (the bundled demo set when ``root`` is None); ``metadata`` names
    its metadata file when it is not one of METADATA_NAMES (e.g. the reference's ``trainset.json``)."""
    demo = root is None
    root = Path(DEMO_DIR if demo else root)
    if not root.is_dir():
        raise DataError(f"dataset directory {root} does not exist")
    if demo:
        fmt = fmt or "coco"
        missing = missing or DEMO_DIR / "missing-mixed-0.7.json"
    fmt = fmt or detect_format(root)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    meta = _metadata_file(root, metadata)
    try:  # undecodable bytes survive as lone surrogates: they fail their own sample, not the dataset
        items = json.loads(meta.read_bytes().decode("utf-8", errors="surrogateescape"))
    except ValueError as e:
        raise DataError(f"{meta}: not valid JSON ({e})") from e
    if not isinstance(items, list):
        raise DataError(f"{meta}: expected a JSON list of records")
    miss, bad = read_missing(Path(missing), len(items)) if missing else ({}, {})
    return Dataset(name or ("demo" if demo else root.name), root, fmt, items, miss, bad, max_pixels)


def image_path(ds: Dataset, file_name: str) -> Path:
    """The image's path under the dataset directory; ValueError when ``file_name`` leaves it."""
    p = IN.inside(ds.root, file_name)
    if not p.exists() and (ds.root / "images").is_dir():
        alt = IN.inside(ds.root / "images", file_name)
        p = alt if alt.exists() else p
    return p


def load_sample(ds: Dataset, index: int, missing: str | None) -> Sample:
    """Load one sample; only the available modalities are read. Raises SampleError."""
    sid = f"{ds.name}:{index}"
    if not 0 <= index < len(ds.items):
        raise SampleError(sid, f"index {index} is past the end of the dataset ({len(ds.items)} items)")
    if index in ds.bad:
        raise SampleError(sid, ds.bad[index])
    rec = ds.items[index]
    if not isinstance(rec, dict):
        raise SampleError(sid, "metadata record is not an object")
    text = image = None
    if missing != "text":
        text = text_of(rec, ds.format)
        if not text:
            raise SampleError(sid, "text is empty")
        try:
            text = IN.check_text(text)
        except ValueError as e:
            raise SampleError(sid, str(e)) from None
    if missing != "image":
        fn = rec.get("file_name")
        if not fn:
            raise SampleError(sid, "record has no file_name")
        try:
            path = image_path(ds, fn)
        except ValueError as e:
            raise SampleError(sid, str(e)) from None
        try:
            image = load_image(path, ds.max_pixels)
        except FileNotFoundError:
            raise SampleError(sid, f"image file not found: {path}") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise SampleError(sid, f"unreadable image {path}: {e}") from None
    labels = rec.get("labels")
    labels = [labels] if isinstance(labels, (str, int, float)) else list(labels or [])
    return Sample(sid, index, text, image, missing, labels, rec.get("file_name"))


def incomplete_indices(ds: Dataset) -> list[int]:
    return sorted(set(ds.missing) | set(ds.bad))


def make_missing(total: int, kind: str, ratio: float, seed: int = 0) -> dict:
    """A reference-format missing config. ``mixed`` splits the missing samples evenly between
    text-missing and image-missing."""
    if kind not in ("text", "image", "mixed"):
        raise DataError(f"missing type must be text, image or mixed, not {kind!r}")
    if not 0.0 <= ratio <= 1.0:
        raise DataError("missing ratio must be in [0, 1]")
    rng = random.Random(seed)
    n = int(round(total * ratio))
    idx = sorted(rng.sample(range(total), n))
    details = {}
    order = idx[:]
    rng.shuffle(order)
    for k, i in enumerate(order):
        which = kind if kind != "mixed" else ("text" if k % 2 == 0 else "image")
        details[str(i)] = [0, 1] if which == "text" else [1, 0]
    return {"type": kind, "missing_ratio": ratio, "num_missing": n, "total": total,
            "missing_indices": idx, "missing_details": dict(sorted(details.items(), key=lambda kv: int(kv[0])))}
