"""JSON schemas of the medical (chest-X-ray) answers, bounded like the general ones.

The analysis record is the reference's medical analysis (anatomy, abnormality and its
characteristics, side / location / extent, CheXpert diagnoses, recommendation) plus triples, which
the reference never produced. Diagnoses and sides are enums, so records from different samples
and candidates share one vocabulary.
"""
from __future__ import annotations

from kbridge.engine.config import KnowledgeConfig
from kbridge.engine.domains.chest_xray.record import CHEXPERT, EXTENTS, SIDES, STATUS
from kbridge.engine.domains.lmm import triple
from kbridge.engine.lmm.grammar import array, enum, obj, text, words


def diagnoses(lo: int = 1, hi: int = 4) -> dict:
    return array(enum(CHEXPERT), lo, hi)


def record(k: KnowledgeConfig) -> dict:
    """One chest-X-ray analysis with its triples."""
    name = text(k.name_chars)
    finding = obj({"abnormality": name, "characteristics": array(name, 0, k.max_attributes),
                   "side": enum(SIDES), "location": name, "extent": enum(EXTENTS)})
    anatomy = obj({"structure": name, "status": enum(STATUS)})
    return obj({"anatomy": array(anatomy, 1, k.max_objects), "findings": array(finding, 0, k.max_objects),
                "diagnoses": diagnoses(), "recommendation": text(k.name_chars * 3),
                "triples": array(triple(k), 1, k.triples)})


def reports(n: int, span: tuple[int, int]) -> dict:
    """N reports to condition the X-ray generator on (image missing)."""
    return obj({"reports": array(words(*span), n, n)})


def report_candidates(k: KnowledgeConfig, n: int, span: tuple[int, int]) -> dict:
    """N reports for a text-missing X-ray, each with its diagnoses and its own triples."""
    item = obj({"text": words(*span), "diagnoses": diagnoses(1, 3),
                "triples": array(triple(k), 1, k.caption_triples)})
    return obj({"reports": array(item, n, n)})
