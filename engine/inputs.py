"""Input checks of a dataset, one problem per sample: paths that leave the dataset directory, image
size caps, text that is not UTF-8, missing-config entries that are not 0/1 flags.

Used by engine/data.py; everything here either returns a value or raises ``ValueError`` with a
message that data.py turns into a ``SampleError`` (one sample) or a ``DataError`` (the dataset).
"""
from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
"""Largest image accepted (``run.max_pixels``): twice Pillow's decompression-bomb limit."""
WORK_PIXELS = 2048 * 2048
"""Images are downscaled on load to at most this many pixels: no model reads more (SDXL works at
1024², CLIP at 224²), and a 180-megapixel scan must not hold 540 MB per sample in flight."""
MAX_TEXT_CHARS = 16_000
"""The LMM reads at most this many characters of a sample's text (about 4k tokens); the text
towers (CLIP, BLIP, Cheff's BERT) truncate further to their own token limits."""

_pillow_limit = threading.Lock()


def inside(root: Path, file_name) -> Path:
    """``root / file_name``, refusing names that leave ``root`` (``..`` segments, absolute paths
    elsewhere). Lexical, so a dataset whose ``images/`` is a symlink still works."""
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"file_name must be a non-empty string, not {file_name!r}")
    base = os.path.abspath(root)
    p = os.path.normpath(os.path.join(base, file_name))
    if os.path.commonpath([base, p]) != base:
        raise ValueError(f"file_name {file_name!r} leaves the dataset directory (refused)")
    return Path(p)


def _open(path: Path, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if max_pixels <= 2 * (Image.MAX_IMAGE_PIXELS or max_pixels):
            try:
                return Image.open(path)
            except Image.DecompressionBombError:
                raise ValueError(f"image has more than {max_pixels} pixels (run.max_pixels)") from None
        with _pillow_limit:  # a cap above Pillow's own: lift its check for this open only
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                return Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = old


def open_capped(path: Path, max_pixels: int, normalize) -> Image.Image:
    """Decode ``path`` (refused above ``max_pixels``), downscaled to at most WORK_PIXELS, through
    ``normalize`` (mode and orientation → 8-bit RGB)."""
    with _open(path, max_pixels) as im:
        w, h = im.size
        if w * h > max_pixels:
            raise ValueError(f"image is {w}x{h} = {w * h} pixels, above the cap of {max_pixels} (run.max_pixels)")
        factor = math.ceil(math.sqrt(w * h / WORK_PIXELS)) if w * h > WORK_PIXELS else 1
        if factor > 1 and im.format == "JPEG":
            im.draft("RGB", (w // factor, h // factor))  # decode at reduced size: far less memory
        im.load()
        if factor > 1 and im.width * im.height > WORK_PIXELS:
            f = math.ceil(math.sqrt(im.width * im.height / WORK_PIXELS))
            try:
                im = im.reduce(f)
            except ValueError:  # a mode reduce() does not take (P, 1, I;16): normalise first
                im = normalize(im).reduce(f)
        return normalize(im)


def check_text(text: str) -> str:
    """The text, truncated to MAX_TEXT_CHARS; refuses text that is not valid UTF-8 (undecodable
    bytes survive JSON loading as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text is not valid UTF-8 (undecodable byte at character {e.start})") from None
    return text[:MAX_TEXT_CHARS]


def parse_missing(cfg, total: int) -> tuple[dict[int, str], dict[int, str]]:
    """A reference missing config → ({index: "image" | "text"}, {index: why it cannot be used}).

    Entries with both modalities missing or flags that are not 0/1 fail their own sample. When
    ``missing_indices`` disagrees with ``missing_details`` (or repeats an index), one warning names
    the difference and the details win. Raises ValueError for a config that is not one at all."""
    if not isinstance(cfg, dict) or "missing_details" not in cfg:
        raise ValueError("no missing_details object")
    details = cfg["missing_details"]
    if not isinstance(details, dict):
        raise ValueError("missing_details must be an object")
    missing, bad = {}, {}
    for key, flags in details.items():
        try:
            idx = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"entry {key!r}: not a sample index") from None
        ok = isinstance(flags, (list, tuple)) and len(flags) == 2 and all(
            isinstance(f, int) and not isinstance(f, bool) and f in (0, 1) for f in flags)
        if not ok:
            bad[idx] = f"missing flags {flags!r} are not two 0/1 values [text, image]"
        elif list(flags) == [0, 1]:
            missing[idx] = "text"
        elif list(flags) == [1, 0]:
            missing[idx] = "image"
        elif list(flags) == [0, 0]:
            bad[idx] = "both modalities are missing (nothing to complete from)"
    listed = cfg.get("missing_indices")
    if isinstance(listed, list):
        flagged = {i for i in missing} | {i for i in bad}
        try:
            as_ints = [int(i) for i in listed]
        except (TypeError, ValueError):
            as_ints = []
        repeats = sorted({i for i in as_ints if as_ints.count(i) > 1})
        extra, absent = sorted(set(as_ints) - flagged), sorted(flagged - set(as_ints))
        if repeats or extra or absent:
            log.warning("missing config: missing_indices disagrees with missing_details (%s); the details win",
                        "; ".join(f"{what} {vals[:10]}" for what, vals in (
                            ("repeated", repeats), ("not in the details", extra), ("not listed", absent)) if vals))
    return missing, bad
