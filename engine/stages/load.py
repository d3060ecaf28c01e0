"""Load: decode a sample's available modality when it enters the pipeline (or a phase that needs
it again). Runs on the I/O thread; a bad file fails only its own row."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kbridge.engine import data as D
from kbridge.engine.rows import Row
from kbridge.engine.types import SampleError


def _sample_needs(row: Row) -> bool:
    s = row.sample
    return (s.missing != "text" and s.text is None) or (s.missing != "image" and s.image is None)


def needs_load(row: Row, cfg=None) -> bool:
    return _sample_needs(row) or bool(row.extra.get("image_paths"))


def _candidate_images(row: Row) -> Row:
    """Candidate images a previous phase persisted, decoded again."""
    paths = row.extra.get("image_paths", {})
    cands = tuple(replace(c, image=D.load_image(Path(paths[c.id]))) if c.id in paths else c for c in row.candidates)
    return row.replace(candidates=cands, extra={k: v for k, v in row.extra.items() if k != "image_paths"})


def load(rows: list[Row], ctx) -> list[Row]:
    out = []
    for r in rows:
        try:
            if _sample_needs(r):
                s = D.load_sample(ctx.dataset, r.sample.index, r.sample.missing)
                r = r.replace(sample=replace(s, text=r.sample.text if r.sample.text is not None else s.text))
            out.append(_candidate_images(r) if r.extra.get("image_paths") else r)
        except SampleError as e:
            out.append(r.fail("load", e.message))
        except (OSError, ValueError) as e:
            out.append(r.fail("load", f"a persisted candidate image is unreadable: {e}"))
    return out
