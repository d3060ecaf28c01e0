"""One frozen table entry per domain: which LMM functions, generator and scorer its stages use.

Stages never test the domain; they call what ``domain_of(cfg)`` picked. Adding a domain means
adding an entry here and its functions (same signatures as the general ones):

- ``extract(client, cfg, samples) -> list[Knowledge | SampleError]``
- ``write_prompts(client, cfg, samples, knowledge, turn) -> list[list[str] | SampleError]``
  (image missing: one conditioning text per generated image)
- ``write_captions(client, cfg, samples, knowledge, turn) -> list[list[Candidate] | SampleError]``
  (text missing: text candidates, each with its own triples)
- ``candidate_triples(client, cfg, owners, candidates, turn) -> list[list[Triple] | SampleError]``
- ``load_generator(cfg, device)`` / ``load_scorer(cfg)``: the model seams (engine/models.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kbridge.engine import extract as E
from kbridge.engine import med_stages as M
from kbridge.engine.config import PipelineConfig
from kbridge.engine.generate import text as T


@dataclass(frozen=True)
class Domain:
    name: str
    extract: Callable
    write_prompts: Callable
    write_captions: Callable
    candidate_triples: Callable
    generator_slot: Callable[[PipelineConfig], str]
    scorer_slot: Callable[[PipelineConfig], str]
    demo: Callable[[], tuple[Path, str, Path]]
    """(directory, format, missing config) of the bundled demo set."""
    default_format: str | None
    """The text rule a dataset of this domain uses when --format is not given (None: detect)."""
    swappable: bool
    """Whether the generator and scorer have exported graphs (``--backend`` other than torch)."""
    reextract_texts: bool = False
    """Whether written text candidates without triples get them in the candidate-knowledge stage
    (``[knowledge] caption_triples_from = "extracted"``); reports carry their own findings."""


def _general_demo() -> tuple[Path, str, Path]:
    from kbridge.engine.data import DEMO_DIR

    return DEMO_DIR, "coco", DEMO_DIR / "missing-mixed-0.7.json"


def _xray_demo() -> tuple[Path, str, Path]:
    from kbridge.engine.medical import demo_paths

    return demo_paths()


GENERAL = Domain("general", E.extract, T.write_prompts, T.write_captions, E.candidate_triples,
                 generator_slot=lambda cfg: "sdxl_base", scorer_slot=lambda cfg: "clip", demo=_general_demo,
                 default_format=None, swappable=True, reextract_texts=True)
CHEST_XRAY = Domain("chest_xray", M.extract, M.write_reports, M.write_report_candidates, M.candidate_triples,
                    generator_slot=lambda cfg: cfg.medical.generator, scorer_slot=lambda cfg: cfg.medical.scorer,
                    demo=_xray_demo, default_format="iuxray", swappable=False)

DOMAINS = {"general": GENERAL, "medical": CHEST_XRAY}
"""Keyed by ``run.domain`` (users say ``--domain medical`` for the chest-X-ray entry)."""


def domain_of(cfg: PipelineConfig) -> Domain:
    return DOMAINS[cfg.run.domain]
