"""JSON schemas of the medical (chest-X-ray) answers, bounded like the general ones.

The analysis record is the reference's medical analysis (anatomy, abnormality and its
characteristics, side / location / extent, CheXpert diagnoses, recommendation) plus triples, which
the reference never produced. Diagnoses and sides are enums, so records from different samples
and candidates share one vocabulary.
"""
from __future__ import annotations

from kbridge.engine.config import KnowledgeConfig
from kbridge.engine.lmm.schemas import _array, _obj, _text, _words, triple
from kbridge.engine.medical import CHEXPERT, EXTENTS, SIDES, STATUS


def _enum(values) -> dict:
    return {"type": "string", "enum": list(values)}


def diagnoses(lo: int = 1, hi: int = 4) -> dict:
    return _array(_enum(CHEXPERT), lo, hi)


def record(k: KnowledgeConfig) -> dict:
    """One chest-X-ray analysis with its triples."""
    name = _text(k.name_chars)
    finding = _obj({"abnormality": name, "characteristics": _array(name, 0, k.max_attributes),
                    "side": _enum(SIDES), "location": name, "extent": _enum(EXTENTS)})
    anatomy = _obj({"structure": name, "status": _enum(STATUS)})
    return _obj({"anatomy": _array(anatomy, 1, k.max_objects), "findings": _array(finding, 0, k.max_objects),
                 "diagnoses": diagnoses(), "recommendation": _text(k.name_chars * 3),
                 "triples": _array(triple(k), 1, k.triples)})


def reports(n: int, words: tuple[int, int]) -> dict:
    """N reports to condition the X-ray generator on (image missing)."""
    return _obj({"reports": _array(_words(*words), n, n)})


def report_candidates(k: KnowledgeConfig, n: int, words: tuple[int, int]) -> dict:
    """N reports for a text-missing X-ray, each with its diagnoses and its own triples."""
    item = _obj({"text": _words(*words), "diagnoses": diagnoses(1, 3),
                 "triples": _array(triple(k), 1, k.caption_triples)})
    return _obj({"reports": _array(item, n, n)})
