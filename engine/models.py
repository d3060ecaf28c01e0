"""Loading the models a run needs, once per process: one small function per model seam.

Each function picks the implementation from the config (backend, device, dtype) and resolves
directories through the zoo, so the tiny twins and real weights share every line of loading code.
"""
from __future__ import annotations

import logging

from kbridge.engine import zoo
from kbridge.engine.config import ConfigError, PipelineConfig
from kbridge.engine.scheduler import Models

log = logging.getLogger("kbridge.models")


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
    backend = cfg.lmm.backend
    if backend == "http":  # no local weights: the server has them
        from kbridge.engine.lmm.vllm_http import HTTPBackend

        return HTTPBackend(cfg.lmm)
    if backend == "auto":
        from kbridge.engine.lmm.vllm_local import vllm_usable

        backend = "vllm" if vllm_usable() else "hf"
    if backend == "vllm":
        from kbridge.engine.lmm.vllm_local import VLLMBackend

        return VLLMBackend(zoo.resolve("lmm", cfg), cfg.lmm, cfg.profile)
    if backend == "hf":
        from kbridge.engine.lmm.hf import HFBackend

        return HFBackend(zoo.resolve("lmm", cfg), cfg.lmm)
    raise ConfigError(f"unknown LMM backend {cfg.lmm.backend!r} (known: hf, http, vllm, auto)")


def load_scorer(cfg: PipelineConfig):
    """The semantic scorer (``embed_texts`` / ``embed_images`` → unit vectors), chosen by
    ``rank.semantic``: CLIP, BLIP, or both averaged (CLIP's text tower then embeds triples)."""
    from kbridge.engine.rank.semantic import ClipScorer, MeanScorer

    if cfg.run.domain == "medical":
        from kbridge.engine.rank.medical import ReportScorer

        return ReportScorer(ClipScorer(zoo.resolve(cfg.medical.scorer, cfg), cfg.rank.device))
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


def load_retriever(cfg: PipelineConfig, run_dir):
    """The corpus index saved with the run (``kbridge index build``), or None: when
    ``rank.retrieve_k`` is 0, when no index was built, or when faiss is not installed."""
    from kbridge.engine.rank.index import IndexUnavailable
    from kbridge.engine.rank.retrieve import IndexMismatch, Retriever, index_dir

    path = index_dir(cfg, run_dir)
    if cfg.rank.retrieve_k <= 0 or not (path / "meta.json").exists():
        return None
    try:
        return Retriever.load(cfg, path)
    except (IndexUnavailable, IndexMismatch) as e:
        log.warning("retrieval off: %s", e)
        return None


def load_generator(cfg: PipelineConfig):
    """The image generator (``render(prompts, seeds) -> images`` with ``counters``)."""
    if cfg.run.domain == "medical":
        from kbridge.engine.generate.cheff import CheffGenerator

        return CheffGenerator(zoo.resolve(cfg.medical.generator, cfg), cfg.medical)
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
