"""One frozen table entry per domain: its LMM functions, its dense models and what it refuses.

Stages, loaders and checks never test the domain's name; they call what ``domain_of(cfg)``
picked. Adding a domain means a folder beside general/ and chest_xray/ and an entry here, with
functions of the same signatures as the general ones:

- ``extract(client, cfg, samples) -> list[Knowledge | SampleError]``
- ``write_prompts(client, cfg, samples, knowledge, turn) -> list[list[str] | SampleError]``
  (image missing: one conditioning text per generated image)
- ``write_captions(client, cfg, samples, knowledge, turn) -> list[list[Candidate] | SampleError]``
  (text missing: text candidates, each with its own triples)
- ``candidate_triples(client, cfg, owners, candidates, turn) -> list[list[Triple] | SampleError]``
- ``load_generator(cfg, device)``, ``load_scorer(cfg)``, ``render_devices(cfg)``: the dense model
  seams (engine/models.py calls them)
- ``check(cfg)``: ConfigError for what the domain cannot run (``Engine`` calls it before any work)
- ``scorer_key(cfg)``: what fixes a corpus index's embedding space (rank/retrieve.py)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kbridge.engine.config import DOMAIN_ALIASES, PipelineConfig
from kbridge.engine.domains.chest_xray import loaders as ML
from kbridge.engine.domains.chest_xray import stages as M
from kbridge.engine.domains.general import knowledge as K
from kbridge.engine.domains.general import loaders as GL
from kbridge.engine.domains.general import write as W


@dataclass(frozen=True)
class Domain:
    name: str
    extract: Callable
    write_prompts: Callable
    write_captions: Callable
    candidate_triples: Callable
    load_generator: Callable
    load_scorer: Callable
    render_devices: Callable[[PipelineConfig], tuple[str, ...]]
    check: Callable[[PipelineConfig], None]
    scorer_key: Callable[[PipelineConfig], dict]
    demo: Callable[[], tuple[Path, str, Path]]
    """(directory, format, missing config) of the bundled demo set."""
    default_format: str | None
    """The text rule a dataset of this domain uses when --format is not given (None: detect)."""
    reextract_texts: bool = False
    """Whether written text candidates without triples get them in the candidate-knowledge stage
    (``[knowledge] caption_triples_from = "extracted"``); reports carry their own findings."""


def _general_demo() -> tuple[Path, str, Path]:
    from kbridge.engine.data import DEMO_DIR

    return DEMO_DIR, "coco", DEMO_DIR / "missing-mixed-0.7.json"


def _xray_demo() -> tuple[Path, str, Path]:
    from kbridge.engine.domains.chest_xray.record import demo_paths

    return demo_paths()


GENERAL = Domain("general", K.extract, W.write_prompts, W.write_captions, K.candidate_triples,
                 GL.load_generator, GL.load_scorer, GL.render_devices, GL.check, GL.scorer_key,
                 demo=_general_demo, default_format=None, reextract_texts=True)
CHEST_XRAY = Domain("chest_xray", M.extract, M.write_reports, M.write_report_candidates, M.candidate_triples,
                    ML.load_generator, ML.load_scorer, ML.render_devices, ML.check, ML.scorer_key,
                    demo=_xray_demo, default_format="iuxray")

DOMAINS = {d.name: d for d in (GENERAL, CHEST_XRAY)}
"""Keyed by ``run.domain`` (config.DOMAINS lists the names; ``medical`` is an alias of ``chest_xray``)."""


def domain_of(cfg: PipelineConfig) -> Domain:
    return DOMAINS[DOMAIN_ALIASES.get(cfg.run.domain, cfg.run.domain)]
