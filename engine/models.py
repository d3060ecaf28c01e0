"""Loading the models a run needs, once per process: one small function per model seam.

Each function picks the implementation from the config (backend, device, dtype) and resolves
directories through the zoo, so the tiny twins and real weights share every line of loading code.
"""
from __future__ import annotations

from kbridge.engine import zoo
from kbridge.engine.config import ConfigError, PipelineConfig
from kbridge.engine.scheduler import Models


def quiet_libraries() -> None:
    """No progress bars or advisory warnings from transformers / diffusers in our output."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def load_lmm(cfg: PipelineConfig):
    """The LMM backend (anything with ``model_id`` and ``async generate(requests)``)."""
    if cfg.lmm.backend == "hf":
        from kbridge.engine.lmm.hf import HFBackend

        return HFBackend(zoo.resolve("lmm", cfg), cfg.lmm)
    raise ConfigError(f"unknown LMM backend {cfg.lmm.backend!r} (known: hf)")


def load_scorer(cfg: PipelineConfig):
    """The semantic scorer (``embed_texts`` / ``embed_images`` → unit vectors)."""
    from kbridge.engine.rank.semantic import ClipScorer

    path = zoo.resolve("clip", cfg)
    scorer = ClipScorer(path, cfg.rank.device)
    if cfg.runtime.backend != "torch":
        from kbridge.engine.runtime.swap import clip_towers

        scorer.towers = clip_towers(scorer.model, path, cfg)
    return scorer


def load_generator(cfg: PipelineConfig):
    """The image generator (``render(prompts, seeds) -> images`` with ``counters``)."""
    from kbridge.engine.generate.sdxl import SDXLGenerator

    refiner = zoo.resolve("sdxl_refiner", cfg) if cfg.generation.refiner else None
    base = zoo.resolve("sdxl_base", cfg)
    swap = None
    if cfg.runtime.backend != "torch":
        from kbridge.engine.runtime.swap import swap_sdxl

        def swap(b, r):
            swap_sdxl(b, r, base, refiner, cfg)
    return SDXLGenerator(base, refiner, cfg.generation, swap=swap)


def load_models(cfg: PipelineConfig, need_diffusion: bool) -> Models:
    quiet_libraries()
    return Models(load_lmm(cfg), load_scorer(cfg), load_generator(cfg) if need_diffusion else None)
