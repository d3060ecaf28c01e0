"""Loading the models a run needs, once per process: one small function per model seam.

Each function picks the implementation from the config (backend, device, dtype) and resolves
directories through the zoo, so the tiny twins and real weights share every line of loading code.
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from kbridge.engine import zoo
from kbridge.engine.config import ConfigError, PipelineConfig
from kbridge.engine.rank import Scorer
from kbridge.engine.stages import Ctx

log = logging.getLogger(__name__)


class Generator(Protocol):
    """Renders one image per (conditioning text, seed); ``counters`` count UNet rows and VAE decodes."""

    counters: object

    def render(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list: ...
    # optional ``stop=`` (a callable asked between denoising steps): SDXLGenerator has it


class LMMBackend(Protocol):
    model_id: str
    continuous_batching: bool
    """The engine batches requests as they arrive (vLLM in-process or over HTTP): each row's LMM
    requests are sent on their own. False (hf): a stage's rows are decoded together."""

    async def generate(self, requests: Sequence) -> list: ...


@dataclass
class Models:
    """What a run has loaded, by slot. The executor loads a slot when a stage that needs it starts
    and, in the phased schedule, releases it when that stage group ends."""

    lmm: LMMBackend | None = None
    scorer: Scorer | None = None
    generators: list = field(default_factory=list)
    """Generator replicas, one per device given to diffusion (data-parallel render workers)."""
    retriever: object | None = None
    """The run's corpus index (retrieve/corpus.py), or None: retrieved candidates join the ranking."""

    def release(self, *slots: str) -> None:
        """Drop the named slots, close what they held (an in-process vLLM engine shuts down, a server
        ``kbridge run`` started stops) and give the memory back (GPU caches included). The caller
        must hold no other reference (a phase's client and context are dropped before this)."""
        for s in slots:
            _close(getattr(self, s))
            setattr(self, s, [] if s == "generators" else None)
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _close(held) -> None:
    """``close()`` each object of a slot that has one (a failure is logged: the release goes on)."""
    for obj in held if isinstance(held, list) else [held]:
        close = getattr(obj, "close", None)
        if callable(close):
            try:
                close()
            except Exception as e:  # noqa: BLE001 - a failed shutdown must not stop the run
                log.warning("closing %s failed: %s: %s", type(obj).__name__, type(e).__name__, e)


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
    if backend == "http" and cfg.lmm.manage_server:  # this run starts the server, and a release stops it
        from kbridge.engine.lmm.lifecycle import ServedBackend

        return ServedBackend(cfg, str(zoo.resolve("lmm", cfg)))
    if backend == "http":  # no local weights: the server has them
        from kbridge.engine.lmm.vllm_http import HTTPBackend

        return HTTPBackend(cfg.lmm)
    if backend == "auto":
        from kbridge.engine.lmm.vllm_local import vllm_usable

        backend = "vllm" if vllm_usable() else "hf"
    if backend == "vllm":
        from kbridge.engine.lmm.vllm_local import VLLMBackend, model_dir

        return VLLMBackend(model_dir(cfg), cfg.lmm, cfg.profile)
    if backend == "hf":
        from kbridge.engine.lmm.hf import HFBackend

        return HFBackend(zoo.resolve("lmm", cfg), cfg.lmm)
    raise ConfigError(f"unknown LMM backend {cfg.lmm.backend!r} (known: hf, http, vllm, auto)")


def load_scorer(cfg: PipelineConfig):
    """The run's domain's semantic scorer (``embed_texts`` / ``embed_images`` → unit vectors)."""
    from kbridge.engine.domains import domain_of

    return domain_of(cfg).load_scorer(cfg)


def load_retriever(cfg: PipelineConfig, run_dir):
    """The corpus index saved with the run (``kbridge index build``), or None: when
    ``rank.retrieve_k`` is 0, when no index was built, or when faiss is not installed."""
    from kbridge.engine.retrieve.index import IndexUnavailable
    from kbridge.engine.retrieve.corpus import IndexMismatch, Retriever, index_dir

    path = index_dir(cfg, run_dir)
    if cfg.rank.retrieve_k <= 0 or not (path / "meta.json").exists():
        return None
    try:
        faiss_retriever = Retriever.load(cfg, path)
    except (IndexUnavailable, IndexMismatch) as e:
        log.warning("retrieval off: %s", e)
        return None
    if cfg.rank.retriever == "faiss":
        return faiss_retriever
    from kbridge.engine.retrieve.mire.retriever import with_mire  # text-missing samples by MIRe (engine/retrieve/mire/)

    return with_mire(cfg, path, faiss_retriever)


def load_generator(cfg: PipelineConfig, device: str | None = None):
    """The image generator of the run's domain on ``device`` (default: the config's)."""
    from kbridge.engine.domains import domain_of

    return domain_of(cfg).load_generator(cfg, device)


def render_devices(cfg: PipelineConfig) -> tuple[str, ...]:
    """One render worker per device given to the domain's generator."""
    from kbridge.engine.domains import domain_of

    return domain_of(cfg).render_devices(cfg)


def make_context(cfg: PipelineConfig, models: Models, index_dir=None, cache=None, **fields) -> Ctx:
    """What stage calls get (``stages.Ctx``) over loaded ``models``: the corpus index of
    ``index_dir`` as the retriever when given, an LMM client over ``models.lmm`` (answers kept in
    ``cache`` when ``lmm.cache`` is on), the run's domain, and the other ``Ctx`` fields given
    (``Engine.context`` is the usual way in)."""
    from kbridge.engine.domains import domain_of
    from kbridge.engine.lmm import LMMClient, RequestLog

    models.retriever = load_retriever(cfg, index_dir) if index_dir is not None else None
    client = None
    if models.lmm is not None:
        client = LMMClient(models.lmm, RequestLog(), cache if cfg.lmm.cache else None, greedy=cfg.lmm.greedy)
    return Ctx(cfg=cfg, domain=domain_of(cfg), models=models, client=client, **fields)
