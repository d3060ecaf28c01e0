"""Load: decode a sample's available modality when it enters the pipeline (or a phase that needs
it again; the phased schedule's load also decodes the candidate images it persisted, phased.py).
Runs on the I/O thread; a bad file fails only its own row."""
from __future__ import annotations

from dataclasses import replace

from kbridge.engine import data as D
from kbridge.engine.rows import Row
from kbridge.engine.types import SampleError


def needs_load(row: Row, cfg=None) -> bool:
    s = row.sample
    return (s.missing != "text" and s.text is None) or (s.missing != "image" and s.image is None)


def load(rows: list[Row], ctx) -> list[Row]:
    out = []
    for r in rows:
        try:
            if needs_load(r):
                s = D.load_sample(ctx.dataset, r.sample.index, r.sample.missing)
                r = r.replace(sample=replace(s, text=r.sample.text if r.sample.text is not None else s.text))
            out.append(r)
        except SampleError as e:
            out.append(r.fail("load", e.message))
    return out
