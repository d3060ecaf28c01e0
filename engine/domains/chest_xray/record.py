"""The chest-X-ray domain: its labels, report text handling, few-shot examples, and turning a
structured radiology record into Knowledge whose triples make graph ranking work.

IU X-Ray reports carry "XXXX" anonymisation tokens (names, dates, sometimes a redacted word).
They are handled per consumer:
- the LMM sees each run of them as "[redacted]", so it knows something was removed and does not
  copy the token into what it writes;
- text encoders (Cheff's BERT embedder, the scorer's text tower) get them removed, with the
  punctuation tidied, so the placeholder never conditions an X-ray or shifts a similarity.
Literal quotes are already dropped by the iuxray text rule (data.text_of).
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from kbridge.engine.domains.lmm import parse_triples
from kbridge.engine.errors import KbridgeError
from kbridge.engine.types import Knowledge, ObjectInfo, Triple

XRAY_DEMO_DIR = Path(__file__).parents[2] / "demo_xray"

CHEXPERT = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
            "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
            "Fracture", "Support Devices")
"""The 14 CheXpert observation labels the analysis chooses its diagnoses from."""

SIDES = ("left", "right", "bilateral", "midline", "not applicable")
EXTENTS = ("minimal", "small", "moderate", "large", "diffuse", "not applicable")
STATUS = ("normal", "abnormal", "not assessed")

_XXXX = re.compile(r"\bX{2,}(?:[-/,]X{2,})*\b")


def llm_text(text: str) -> str:
    """Report text as the LMM reads it: each run of anonymisation tokens becomes "[redacted]"."""
    return _XXXX.sub("[redacted]", text)


def scoring_text(text: str) -> str:
    """Report text for text encoders: anonymisation tokens removed, spacing and punctuation tidied."""
    t = _XXXX.sub(" ", text)
    t = re.sub(r"[ \t]+", " ", t)
    t = re.sub(r" +([.,;:])", r"\1", t)
    t = re.sub(r"([.,;:])(?:\s*[.,;:])+", r"\1", t)  # "seen on , ." → "seen on."
    return "\n".join(line.strip() for line in t.splitlines() if line.strip(" .,;:"))


def demo_paths() -> tuple[Path, str, Path]:
    """(directory, format, missing config) of the bundled chest-X-ray demo set."""
    return XRAY_DEMO_DIR, "iuxray", XRAY_DEMO_DIR / "missing-mixed-0.75.json"


class FewShotError(KbridgeError, ValueError):
    """The few-shot examples file cannot be read."""


def load_few_shot(path: str, count: int) -> list[dict]:
    """The first ``count`` examples ``{"report", "record"}`` (bundled ones when ``path`` is empty).
    Parsed once per file version (every medical stage call asks for them)."""
    if count <= 0:
        return []
    p = Path(path) if path else XRAY_DEMO_DIR / "few_shot.json"
    try:
        st = p.stat()
    except OSError as e:
        raise FewShotError(f"cannot read few-shot examples {p}: {e}") from e
    return list(_parse_few_shot(str(p), st.st_mtime_ns, st.st_size)[:count])


@functools.lru_cache(maxsize=8)
def _parse_few_shot(path: str, mtime_ns: int, size: int) -> tuple[dict, ...]:
    p = Path(path)
    try:
        items = json.loads(p.read_text())
        ok = isinstance(items, list) and all(isinstance(e, dict) and "report" in e and "record" in e for e in items)
    except (OSError, ValueError) as e:
        raise FewShotError(f"cannot read few-shot examples {p}: {e}") from e
    if not ok:
        raise FewShotError(f"{p}: expected a JSON list of {{\"report\": str, \"record\": object}}")
    return tuple(items)


def record_triples(record: dict) -> list[Triple]:
    """Triples implied by the structured fields: finding → location / side / extent /
    characteristic, structure → status, study → diagnosis. They give every medical graph the same
    vocabulary, so candidates are compared on findings rather than on the LMM's free wording."""
    out = []
    for a in record.get("anatomy", []):
        out.append(Triple(str(a["structure"]), "appears", str(a["status"])))
    for f in record.get("findings", []):
        name = str(f["abnormality"])
        if f.get("location"):
            out.append(Triple(name, "located in", str(f["location"])))
        for key, rel in (("side", "on side"), ("extent", "has extent")):
            if f.get(key) and f[key] != "not applicable":
                out.append(Triple(name, rel, str(f[key])))
        for c in f.get("characteristics", []):
            out.append(Triple(name, "is", str(c)))
    for d in record.get("diagnoses", []):
        out.append(Triple("chest x-ray", "suggests", str(d)))
    return out


def knowledge_from_record(record: dict) -> Knowledge:
    """A radiology record as Knowledge: structures and findings as objects, the diagnoses as the
    style line, the LMM's triples plus the implied ones; the record itself is kept in ``medical``."""
    objs = [ObjectInfo(str(a["structure"]), 1, [str(a["status"])]) for a in record.get("anatomy", [])]
    for f in record.get("findings", []):
        attrs = [str(c) for c in f.get("characteristics", [])]
        attrs += [str(f[k]) for k in ("side", "extent") if f.get(k) and f[k] != "not applicable"]
        if f.get("location"):
            attrs.append(str(f["location"]))
        objs.append(ObjectInfo(str(f["abnormality"]), 1, attrs))
    triples = parse_triples([t.as_dict() for t in record_triples(record)] + list(record.get("triples", [])))
    style = "chest X-ray; " + ", ".join(record.get("diagnoses", []))
    return Knowledge(objs, style, triples, medical=record)
