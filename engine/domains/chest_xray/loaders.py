"""The chest-X-ray domain's dense models: Cheff renders X-rays from reports, a CLIP-layout medical
model scores (reports cleaned for its text tower), both eager torch (no exported graphs yet)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from kbridge.engine import zoo
from kbridge.engine.config import ConfigError, PipelineConfig


def load_generator(cfg: PipelineConfig, device: str | None = None):
    """Cheff (``medical.generator`` slot) on ``device`` (default: ``medical.device``)."""
    from kbridge.engine.domains.chest_xray.record import scoring_text
    from kbridge.engine.generate.cheff import CheffGenerator

    med = cfg.medical if device is None else dataclasses.replace(cfg.medical, device=device)
    return CheffGenerator(zoo.resolve(cfg.medical.generator, cfg), med, clean=scoring_text)


def load_scorer(cfg: PipelineConfig):
    """The ``medical.scorer`` slot's CLIP-layout model; reports lose their anonymisation tokens first."""
    from kbridge.engine.domains.chest_xray.scorer import ReportScorer
    from kbridge.engine.rank.semantic import ClipScorer

    return ReportScorer(ClipScorer(zoo.resolve(cfg.medical.scorer, cfg), cfg.rank.device))


def render_devices(cfg: PipelineConfig) -> tuple[str, ...]:
    """One render worker per device given to X-ray generation (``medical.devices``, else ``device``)."""
    return cfg.medical.devices or (cfg.medical.device,)


def scorer_key(cfg: PipelineConfig) -> dict:
    """What fixes the embedding space of a corpus index built with this domain's scorer."""
    slot = cfg.medical.scorer
    return {"domain": "chest_xray", "scorer": slot, "model": getattr(cfg.models, slot)}


def check(cfg: PipelineConfig) -> None:
    """What the domain cannot do (ConfigError), and its few-shot file read once, before any work."""
    from kbridge.engine.domains.chest_xray.record import FewShotError, load_few_shot

    if cfg.runtime.backend != "torch":
        raise ConfigError("the chest_xray domain's generator (Cheff) and scorer have no exported graphs yet: "
                          "use --backend torch")
    if cfg.run.fidelity != "fast":
        raise ConfigError("the chest_xray domain has one structured analysis per sample: use fidelity 'fast'")
    m = cfg.medical
    if m.few_shot and not Path(m.few_shot).expanduser().is_file():
        raise ConfigError(f"medical.few_shot: no such file {m.few_shot}")
    try:
        load_few_shot(m.few_shot, m.few_shot_count)
    except FewShotError as e:
        raise ConfigError(f"medical.few_shot: {e}") from e
