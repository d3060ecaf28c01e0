"""Prompt text of the medical (chest-X-ray) domain, and its message builders.

Every medical request starts with the same prefix: the radiology system prompt, then the few-shot
examples as (report → record) turns. Only the last user turn is the sample's own, so concurrent
requests share a long cached prefix. The sample's report reaches the model with its anonymisation
tokens shown as "[redacted]" (record.llm_text); images are attached as images, never as paths
pasted into text (a reference bug). Bump ``lmm.PROMPT_VERSION`` when any text here changes.
"""
from __future__ import annotations

import json

from PIL import Image

from kbridge.engine.config import KnowledgeConfig
from kbridge.engine.domains.chest_xray.record import CHEXPERT, llm_text
from kbridge.engine.lmm import assistant_message, system_message, user_message
from kbridge.engine.types import Knowledge

SYSTEM = (
    "You are a thoracic radiologist structuring chest X-ray studies for a dataset-completion engine. "
    "For a chest radiograph or its report, record: the anatomy assessed (lungs, pleura, heart, mediastinum, "
    "hila, diaphragm, bones, devices) and whether each looks normal; every abnormality with its "
    "characteristics (opacity, density, margins, shape), its side, its location (lobe, zone, costophrenic "
    "angle) and its extent; the most likely diagnoses among the 14 CheXpert labels ("
    + ", ".join(CHEXPERT) + "); and a recommended next step. Add (head, relation, tail) facts linking "
    "findings, structures, locations and diagnoses. State only what the study supports; a normal study "
    "has no findings and the diagnosis No Finding."
)


def _sys() -> dict:
    return system_message(SYSTEM)


def prefix(examples: list[dict]) -> list[dict]:
    """System prompt + few-shot turns: identical for every medical request of a run."""
    msgs = [_sys()]
    for ex in examples:
        msgs.append(user_message("Example report:\n" + llm_text(ex["report"])))
        msgs.append(assistant_message(json.dumps(_as_answer(ex["record"]), separators=(",", ":"))))
    return msgs


def _as_answer(record: dict) -> dict:
    """An example record as the model must answer it: triples as [head, relation, tail] tuples
    (schemas.triple), whatever form the examples file uses."""
    tup = lambda t: [t["head"], t["relation"], t["tail"]] if isinstance(t, dict) else list(t)  # noqa: E731
    return {**record, "triples": [tup(t) for t in record["triples"]]} if "triples" in record else record


def _source(text: str | None, image: Image.Image | None) -> list:
    return [image] if image is not None else ["Report:\n" + llm_text(text or "")]


def analysis(k: KnowledgeConfig, examples: list[dict], text: str | None, image: Image.Image | None) -> list[dict]:
    what = "chest radiograph" if image is not None else "report"
    ask = (f"Analyse the {what} below as in the examples: up to {k.max_objects} structures, up to "
           f"{k.max_objects} abnormalities (none if normal) with up to {k.max_attributes} characteristics each, "
           f"1 to 4 CheXpert diagnoses, one recommendation, and up to {k.triples} triples.")
    return [*prefix(examples), user_message(ask, *_source(text, image))]


def _record_block(kn: Knowledge) -> str:
    return "Analysis: " + json.dumps(kn.medical or kn.as_dict(), separators=(",", ":"))


def reports_for_images(examples: list[dict], n: int, words: tuple[int, int], text: str, kn: Knowledge) -> list[dict]:
    ask = (f"The radiograph of this study is lost. From its report and analysis below, write {n} different "
           f"chest X-ray reports of {words[0]} to {words[1]} words, each a faithful findings-and-impression "
           "description of the same study that an X-ray generator can render: keep every finding with its side, "
           "location and extent, vary the wording and order. No names, dates or placeholders.")
    return [*prefix(examples), user_message(ask, _record_block(kn), "Report:\n" + llm_text(text))]


def reports_for_text(k: KnowledgeConfig, examples: list[dict], n: int, words: tuple[int, int], image: Image.Image,
                     kn: Knowledge) -> list[dict]:
    ask = (f"The report of this study is lost. Write {n} different chest X-ray reports of {words[0]} to "
           f"{words[1]} words for the radiograph below, faithful to it and to the analysis, varying wording and "
           f"emphasis; give each its CheXpert diagnoses and up to {k.caption_triples} triples it states.")
    return [*prefix(examples), user_message(ask, _record_block(kn), image)]
