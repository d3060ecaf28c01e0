"""The general domain's dense models: SDXL (base + optional refiner) renders, CLIP and/or BLIP score
(``rank.semantic``), each on the runtime backend the config names."""
from __future__ import annotations

import dataclasses

from kbridge.engine import zoo
from kbridge.engine.config import PipelineConfig


def load_generator(cfg: PipelineConfig, device: str | None = None):
    """SDXL on ``device`` (default: ``generation.device``)."""
    from kbridge.engine.generate.sdxl import SDXLGenerator

    gen = cfg.generation if device is None else dataclasses.replace(cfg.generation, device=device)
    refiner = zoo.resolve("sdxl_refiner", cfg) if gen.refiner else None
    base = zoo.resolve("sdxl_base", cfg)
    swap = None
    if cfg.runtime.backend != "torch":
        from kbridge.engine.runtime.swap import swap_sdxl

        def swap(b, r):
            swap_sdxl(b, r, base, refiner, cfg)
    return SDXLGenerator(base, refiner, gen, swap=swap)


def load_scorer(cfg: PipelineConfig):
    """The semantic scorer chosen by ``rank.semantic``: CLIP, BLIP, or both averaged (CLIP's text
    tower then embeds triples)."""
    from kbridge.engine.rank.semantic import ClipScorer, MeanScorer

    scorers = []
    if "clip" in cfg.rank.semantic.split("+"):
        path = zoo.resolve("clip", cfg)
        scorer = ClipScorer(path, cfg.rank.device)
        if cfg.runtime.backend != "torch":
            from kbridge.engine.runtime.swap import clip_towers

            scorer.towers = clip_towers(scorer.model, path, cfg)
        scorers.append(scorer)
    if "blip" in cfg.rank.semantic.split("+"):
        from kbridge.engine.rank.blip import BlipScorer

        scorers.append(BlipScorer(zoo.resolve("blip", cfg), cfg.rank.device, head=cfg.rank.blip_head))
    return scorers[0] if len(scorers) == 1 else MeanScorer(scorers)


def render_devices(cfg: PipelineConfig) -> tuple[str, ...]:
    """One render worker per device given to diffusion (``generation.devices``, else ``device``)."""
    return cfg.generation.devices or (cfg.generation.device,)


def scorer_key(cfg: PipelineConfig) -> dict:
    """What fixes the embedding space of a corpus index built with this domain's scorer."""
    return {"semantic": cfg.rank.semantic, "clip": cfg.models.clip, "blip": cfg.models.blip,
            "blip_head": cfg.rank.blip_head}


def check(cfg: PipelineConfig) -> None:
    """Every option applies to the general domain (config.validate has checked each)."""
