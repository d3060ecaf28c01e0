"""Evaluation data for the classifiers: the reference JSON layout or the reference's Arrow files,
missing modalities as given or filled from a kbridge run, and the CLIP preprocessing.

Flags follow the reference: 0 complete, 1 text missing ('' is fed), 2 image missing (an all-ones
image after normalisation is fed).
"""
from __future__ import annotations

import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kbridge.engine.peers.classify.config import MMIMDB_GENRES, ClassifyError
from kbridge.engine.store import best_candidate, read_results

FLAGS = {None: 0, "text": 1, "image": 2}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Example:
    sample_id: str
    index: int
    """Row of the dataset (for Arrow MM-IMDb: the movie's row; its plots share it)."""
    text: str | None
    image: object  # PIL.Image | Path | bytes | None (loaded lazily)
    missing: str | None
    """As given by the missing config: None, "text" or "image"."""
    labels: tuple
    """Label names (multi-label) or one name (single-label)."""
    filled: bool = False
    """True when the missing modality was filled from a completed run."""

    @property
    def flag(self) -> int:
        return 0 if self.filled else FLAGS[self.missing]


@dataclass
class EvalData:
    examples: list
    source: str
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------- readers

def _missing_table(path: Path, n: int) -> dict:
    """A reference missing table (.pt float tensor of 0/1/2 per row) or a reference JSON config."""
    path = Path(path)
    if path.suffix == ".pt":
        try:
            t = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is one error line
            raise ClassifyError(f"{path}: not a readable missing table ({e})") from None
        if not isinstance(t, torch.Tensor) or t.numel() != n:
            raise ClassifyError(f"{path}: missing table must be a tensor of {n} flags (one per row)")
        return {i: {1: "text", 2: "image"}[int(v)] for i, v in enumerate(t.flatten().tolist()) if int(v) in (1, 2)}
    from kbridge.engine.data import DataError, read_missing_config

    try:
        total = json.loads(path.read_text()).get("total")
    except (OSError, ValueError, AttributeError):
        total = None  # read_missing_config names the problem
    if isinstance(total, int) and total != n:
        raise ClassifyError(f"{path}: the missing config was made for {total} samples but the dataset has {n} "
                            f"rows: not this dataset's missing config")
    try:
        return read_missing_config(path, n)
    except DataError as e:
        raise ClassifyError(str(e)) from None


def _category_names(root: Path) -> list:
    cat = Path(root) / "category.json"
    try:
        return list(json.loads(cat.read_text()).get("label_name") or []) if cat.exists() else []
    except (ValueError, AttributeError) as e:
        raise ClassifyError(f"{cat}: not a valid category.json ({e})") from None


def read_json_dataset(root: Path, task: str, missing: Path | None) -> EvalData:
    """metadata.json (+ category.json, images/) as kbridge reads it; labels are names."""
    from kbridge.engine.data import DataError, detect_format, open_dataset, text_of

    try:
        try:
            fmt = detect_format(Path(root))
        except DataError:
            fmt = "mmimdb" if task == "mmimdb" else "coco"
        ds = open_dataset(root, fmt=fmt)
    except DataError as e:
        raise ClassifyError(str(e)) from None
    miss = _missing_table(missing, len(ds.items)) if missing else {}
    names = _category_names(ds.root)
    out = []
    for i, rec in enumerate(ds.items):
        sid = f"{ds.name}:{i}"
        if not isinstance(rec, dict):
            raise ClassifyError(f"{sid}: metadata record is not an object")
        labels = rec.get("labels")
        labels = [labels] if isinstance(labels, (str, int)) else list(labels or [])
        # integer labels are ids into category.json's label_name
        labels = [names[x] if isinstance(x, int) and 0 <= x < len(names) else x for x in labels]
        fn = rec.get("file_name")
        image = None
        if fn:
            image = ds.root / fn if (ds.root / fn).exists() else ds.root / "images" / fn
        out.append(Example(sid, i, text_of(rec, fmt), image, miss.get(i), tuple(str(x) for x in labels)))
    return EvalData(out, str(root))


def read_arrow(path: Path, task: str, missing: Path | None, class_names: tuple) -> EvalData:
    """The reference's Arrow IPC files (REFERENCE.md §1.6). MM-IMDb rows expand to one example per
    plot, each with the movie's label and missing flag, as the reference evaluates them."""
    import pyarrow as pa

    path = Path(path)
    if path.is_dir():
        cands = sorted(path.glob(f"{task}_test.arrow")) or sorted(path.glob("*.arrow"))
        if not cands:
            raise ClassifyError(f"{path}: no {task}_test.arrow")
        path = cands[0]
    try:
        table = pa.ipc.RecordBatchFileReader(pa.memory_map(str(path), "r")).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise ClassifyError(f"{path}: not an Arrow IPC file ({e})") from None
    text_col = "plots" if task == "mmimdb" else "text"
    for col in ("image", text_col, "label"):
        if col not in table.column_names:
            raise ClassifyError(f"{path}: no {col!r} column (has {', '.join(table.column_names)})")
    images, texts, labels = (table.column(c).to_pylist() for c in ("image", text_col, "label"))
    miss = _missing_table(missing, len(images)) if missing else {}
    out = []
    for i, (img, txt, lab) in enumerate(zip(images, texts, labels)):
        if task == "mmimdb":
            names = tuple(MMIMDB_GENRES[j] for j, v in enumerate(lab) if v)
        else:
            names = (class_names[int(lab)] if 0 <= int(lab) < len(class_names) else str(lab),)
        for j, t in enumerate(txt if isinstance(txt, list) else [txt]):
            out.append(Example(f"{path.stem}:{i}" + (f".{j}" if task == "mmimdb" else ""), i, str(t), img,
                               miss.get(i), names))
    return EvalData(out, str(path))


def read_dataset(data: Path, task: str, missing: Path | None, class_names: tuple) -> EvalData:
    data = Path(data)
    if not data.exists():
        raise ClassifyError(f"{data}: dataset not found")
    if data.suffix == ".arrow" or (data.is_dir() and any(data.glob("*.arrow"))):
        return read_arrow(data, task, missing, class_names)
    return read_json_dataset(data, task, missing)


# ---------------------------------------------------------------- completed runs

_EXPORT_NAME = re.compile(r"images/(?:completed_)?(\d+)[_.]")


def fill_completed(data: EvalData, completed: Path) -> EvalData:
    """Fill each missing modality from a kbridge run directory (results.jsonl: the best candidate)
    or an ``--export-completed`` directory (metadata.json + images/, indices in the file names)."""
    completed = Path(completed)
    fills: dict[int, tuple] = {}  # index → ("text", str) | ("image", Path)
    if (completed / "results.jsonl").exists():
        def bad(n: int, why: str) -> None:
            raise ClassifyError(f"{completed / 'results.jsonl'}: line {n}: not a completed sample ({why})")

        for n, r in enumerate(read_results(completed, bad), 1):
            try:
                idx = int(r["index"]) if "index" in r else int(str(r["sample_id"]).rsplit(":", 1)[1])
                best = best_candidate(r)
                fills[idx] = ("text", best["text"]) if r["missing"] == "text" else \
                    ("image", completed / best["image"])
            except (ValueError, KeyError, TypeError, StopIteration, IndexError) as e:
                raise ClassifyError(f"{completed / 'results.jsonl'}: result {n}: not a completed sample ({e!r})") from None
    elif (completed / "metadata.json").exists():
        try:
            recs = json.loads((completed / "metadata.json").read_text())
        except ValueError as e:
            raise ClassifyError(f"{completed / 'metadata.json'}: not valid JSON ({e})") from None
        for rec in recs:
            # the export names every image after its dataset index (images/<i>_… or completed_<i>.png);
            # an explicit "index" field, if a record has one, wins
            m = _EXPORT_NAME.match(str(rec.get("file_name", "")))
            if "index" not in rec and not m:
                raise ClassifyError(f"{completed / 'metadata.json'}: record without an index or an indexed "
                                    f"file_name: {str(rec.get('file_name'))[:80]!r}")
            idx = int(rec["index"]) if "index" in rec else int(m.group(1))
            caps = rec.get("captions") or []
            fills[idx] = ("both", " ".join(caps) if isinstance(caps, list) else str(caps), completed / rec["file_name"])
    else:
        raise ClassifyError(f"{completed}: neither a kbridge run (results.jsonl) nor an exported dataset (metadata.json)")
    out, filled, unfilled = [], 0, 0
    for ex in data.examples:
        f = fills.get(ex.index)
        if ex.missing is None or f is None:
            unfilled += ex.missing is not None
            out.append(ex)
            continue
        if f[0] == "both":
            ex = replace(ex, text=f[1], filled=True) if ex.missing == "text" else replace(ex, image=f[2], filled=True)
        elif f[0] != ex.missing:
            raise ClassifyError(f"{ex.sample_id}: the run completed its {f[0]} but the missing config says {ex.missing}")
        else:
            ex = replace(ex, text=f[1], filled=True) if f[0] == "text" else replace(ex, image=f[1], filled=True)
        filled += 1
        out.append(ex)
    notes = data.notes + [f"{filled} missing modalities filled from {completed}"]
    if unfilled:
        notes.append(f"{unfilled} incomplete samples have no completion in {completed}; scored as missing")
    return EvalData(out, data.source, notes)


# ---------------------------------------------------------------- labels

def label_targets(examples: list, class_names: tuple, multilabel: bool) -> tuple[torch.Tensor, list, Counter]:
    """Targets by name (case-insensitive) onto the head's classes. Returns (targets: [N, C] 0/1 or
    [N] int, indices of the examples that can be scored, unmapped label → count). A sample is
    scorable with at least one mapped label (multi-label) or exactly one (single-label): a sample
    whose labels are all unknown to the head has no truth to score against."""
    lookup = {n.lower(): i for i, n in enumerate(class_names)}
    unmapped: Counter = Counter()
    rows, keep = [], []
    for k, ex in enumerate(examples):
        ids = []
        for lab in ex.labels:
            if lab.lower() in lookup:
                ids.append(lookup[lab.lower()])
            else:
                unmapped[lab] += 1
        if multilabel and ids:
            v = torch.zeros(len(class_names), dtype=torch.long)
            v[ids] = 1
            rows.append(v)
            keep.append(k)
        elif len(ids) == 1:
            rows.append(torch.tensor(ids[0]))
            keep.append(k)
    if not rows:
        return torch.zeros(0, len(class_names) if multilabel else 0, dtype=torch.long), keep, unmapped
    return torch.stack(rows), keep, unmapped


# ---------------------------------------------------------------- preprocessing

def encode_texts(tokenizer, texts: list, context_length: int) -> torch.Tensor:
    """[B, ctx] int64: SOT … EOT, truncated with EOT kept last, padded with 0 (as clip.tokenize)."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = tokenizer(t or "", add_special_tokens=True)["input_ids"]
        if len(ids) > context_length:
            ids = ids[: context_length - 1] + [eot]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def _open(image) -> Image.Image:
    from kbridge.engine.data import normalize_image

    if isinstance(image, Image.Image):
        return normalize_image(image)
    src = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image
    with Image.open(src) as im:
        im.load()
        return normalize_image(im)


def encode_images(images: list, size: int, sample_ids: list | None = None) -> torch.Tensor:
    """[B, 3, S, S]: resize the shorter side to S (bicubic), centre crop, CLIP normalisation;
    None → all ones (after normalisation), the reference's missing image."""
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    out = torch.ones(len(images), 3, size, size)
    for i, image in enumerate(images):
        if image is None:
            continue
        try:
            im = _open(image)
        except (OSError, ValueError) as e:
            sid = sample_ids[i] if sample_ids else i
            raise ClassifyError(f"{sid}: unreadable image {str(image)[:120]}: {e}") from None
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        a = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out[i] = (a - mean) / std
    return out


def batch_inputs(examples: list, tokenizer, cfg) -> dict:
    """Model inputs for a batch of examples: the missing modality (unless filled) is blanked."""
    texts = ["" if ex.flag == 1 else (ex.text or "") for ex in examples]
    images = [None if ex.flag == 2 else ex.image for ex in examples]
    return {"pixel_values": encode_images(images, cfg.image_size, [e.sample_id for e in examples]),
            "input_ids": encode_texts(tokenizer, texts, cfg.context_length),
            "missing_type": torch.tensor([ex.flag for ex in examples], dtype=torch.long)}
