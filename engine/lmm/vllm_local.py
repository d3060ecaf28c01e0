"""In-process vLLM (``vllm.LLM``): batched generation with schema-guided JSON, for one GPU box.

vLLM is imported only here and only when this backend is built. All requests of one
``generate()`` go to vLLM in a single ``LLM.chat`` call: the engine's scheduler batches them
continuously, reuses shared prompt prefixes, and compiles each JSON schema to a grammar
(``StructuredOutputsParams(json=...)``, the API since vLLM 0.12). Each request has its own seed,
so an answer does not depend on what it was batched with. Serving settings (tensor parallelism,
memory fraction, quantisation, context length) come from the profile's ``ServeProfile``.
"""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from pathlib import Path
from typing import Sequence

from kbridge.engine.config import LMMConfig
from kbridge.engine.lmm import Generation, Request
from kbridge.engine.lmm.openai_format import to_openai
from kbridge.engine.lmm.serving import DEFAULT_LOCAL, SERVE_PROFILES

log = logging.getLogger("kbridge.lmm.vllm")


class BackendUnavailable(RuntimeError):
    """The in-process vLLM backend cannot run here (no vllm package or no CUDA GPU)."""


def vllm_usable() -> bool:
    """The vllm extra is installed and a CUDA GPU is visible."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def llm_kwargs(path: Path, cfg: LMMConfig, profile: str) -> dict:
    """Arguments of ``vllm.LLM`` for a profile (pure: testable without vLLM)."""
    p = SERVE_PROFILES.get(profile, DEFAULT_LOCAL)
    kw = dict(model=str(path), tensor_parallel_size=p.tensor_parallel, gpu_memory_utilization=p.gpu_memory_utilization,
              max_model_len=p.max_model_len, max_num_seqs=max(p.max_num_seqs, cfg.max_batch),
              limit_mm_per_prompt={"image": p.images_per_prompt, "video": 0},
              mm_processor_kwargs={"min_pixels": cfg.image_min_pixels, "max_pixels": cfg.image_max_pixels},
              dtype="auto" if p.quantization else cfg.dtype, enable_prefix_caching=True,
              generation_config="vllm", seed=0)
    if p.quantization:
        kw["quantization"] = p.quantization
    return kw


class VLLMBackend:
    """``model_id`` and ``async generate(requests)`` over an in-process ``vllm.LLM``."""

    def __init__(self, path: Path, cfg: LMMConfig, profile: str = "tiny"):
        if importlib.util.find_spec("vllm") is None:
            raise BackendUnavailable("the vllm LMM backend needs the vllm extra: pip install 'kbridge[vllm]'")
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("the vllm LMM backend needs a CUDA GPU; use backend 'hf' or 'http'")
        from vllm import LLM

        from kbridge.engine.lmm.hf import model_fingerprint

        self.cfg = cfg
        self.model_id = model_fingerprint(Path(path))
        self.llm = LLM(**llm_kwargs(Path(path), cfg, profile))
        self._encoded: dict = {}
        self._lock = threading.Lock()

    def _params(self, req: Request):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        so = StructuredOutputsParams(json=req.schema) if req.schema is not None else None
        return SamplingParams(temperature=0.0 if self.cfg.greedy else req.temperature, top_p=1.0,
                              max_tokens=req.max_new_tokens, seed=req.seed, structured_outputs=so)

    async def generate(self, requests: Sequence[Request]) -> list[Generation]:
        return await asyncio.to_thread(self._generate, list(requests))

    def _generate(self, requests: list[Request]) -> list[Generation]:
        if not requests:
            return []
        # images as PNG data URLs: the same chat rendering path as the HTTP backend, no resize here
        # (the processor's max_pixels applies)
        convs = [to_openai(r.messages, 0, self._encoded) for r in requests]
        with self._lock:  # LLM is not re-entrant; concurrent callers queue
            outs = self.llm.chat(convs, [self._params(r) for r in requests], use_tqdm=False)
        return [Generation(o.outputs[0].text, len(o.prompt_token_ids or []), len(o.outputs[0].token_ids))
                for o in outs]
