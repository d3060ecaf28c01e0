"""In-process vLLM (the async engine, ``AsyncLLM``): continuous batching across every caller, with
schema-guided JSON, for one GPU box.

vLLM is imported only here and only when this backend is built. Every request goes to the engine
on its own as soon as it is made (``AsyncLLM.generate``), so the engine's scheduler batches all
requests in flight — the two in-flight pipeline batches and the concurrent stages — continuously,
reuses shared prompt prefixes, and compiles each JSON schema to a grammar
(``StructuredOutputsParams(json=...)``). The engine lives on its own event loop in a background
thread (it binds to the loop it starts on; ``Engine.run`` starts a fresh loop per run). Prompts are
rendered with the checkpoint's chat template and images are handed over as PIL images (no PNG /
base64 round trip). Each request has its own seed, so an answer does not depend on what it was
batched with. Serving settings (tensor parallelism, memory fraction, context length) come from
the profile's ``ServeProfile``.
"""
from __future__ import annotations

import asyncio
import importlib.util
import itertools
import logging
import threading
from pathlib import Path
from typing import Sequence

from kbridge.engine.config import LMMConfig
from kbridge.engine.lmm import Generation, Request
from kbridge.engine.lmm.serving import DEFAULT_LOCAL, SERVE_PROFILES
from kbridge.engine.errors import Unavailable

log = logging.getLogger("kbridge.lmm.vllm")


class BackendUnavailable(Unavailable, RuntimeError):
    """The in-process vLLM backend cannot run here (no vllm package or no CUDA GPU)."""


def vllm_usable() -> bool:
    """The vllm extra is installed and a CUDA GPU is visible."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def llm_kwargs(path: Path, cfg: LMMConfig, profile: str) -> dict:
    """Engine arguments (``AsyncEngineArgs`` / ``vllm.LLM``) for a profile (pure: testable without vLLM)."""
    p = SERVE_PROFILES.get(profile, DEFAULT_LOCAL)
    kw = dict(model=str(path), tensor_parallel_size=p.tensor_parallel,
              gpu_memory_utilization=cfg.gpu_memory_utilization or p.gpu_memory_utilization,  # the plan's, if set
              max_model_len=p.max_model_len, max_num_seqs=max(p.max_num_seqs, cfg.max_batch),
              limit_mm_per_prompt={"image": p.images_per_prompt, "video": 0},
              mm_processor_kwargs={"min_pixels": cfg.image_min_pixels, "max_pixels": cfg.image_max_pixels},
              dtype="auto" if p.quantization else cfg.dtype, enable_prefix_caching=True,
              generation_config="vllm", seed=0)
    if p.data_parallel > 1:  # the plan's replicas (4090x4: GPUs 0 and 1), as `lmm serve` runs them
        kw["data_parallel_size"] = p.data_parallel
    return kw  # no quantization=: vLLM detects GPTQ from the checkpoint and picks gptq_marlin


def chat_prompt(tok, messages: list[dict]) -> tuple[str, list]:
    """(prompt text from the chat template, the PIL images in order) of one request's messages."""
    images = [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]
    msgs = [{"role": m["role"], "content": [{"type": "image"} if p["type"] == "image" else
                                             {"type": "text", "text": p["text"]} for p in m["content"]]}
            for m in messages]
    return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), images


class VLLMBackend:
    """``model_id`` and ``async generate(requests)`` over an in-process ``AsyncLLM``."""

    def __init__(self, path: Path, cfg: LMMConfig, profile: str = "tiny"):
        if importlib.util.find_spec("vllm") is None:
            raise BackendUnavailable("the vllm LMM backend needs the vllm extra: pip install 'kbridge[vllm]'")
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("the vllm LMM backend needs a CUDA GPU; use backend 'hf' or 'http'")
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from kbridge.engine.lmm.hf import model_fingerprint

        self.cfg = cfg
        self.model_id = model_fingerprint(Path(path))
        self.tok = AutoTokenizer.from_pretrained(path)
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="kbridge-vllm", daemon=True).start()
        args = AsyncEngineArgs(**llm_kwargs(Path(path), cfg, profile))

        async def make():
            return AsyncLLM.from_engine_args(args)

        self.engine = asyncio.run_coroutine_threadsafe(make(), self._loop).result()

    def _params(self, req: Request):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        so = StructuredOutputsParams(json=req.schema) if req.schema is not None else None
        return SamplingParams(temperature=0.0 if self.cfg.greedy else req.temperature, top_p=1.0,
                              max_tokens=req.max_new_tokens, seed=req.seed, structured_outputs=so)

    async def generate(self, requests: Sequence[Request]) -> list[Generation]:
        futs = [asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._one(r), self._loop)) for r in requests]
        return list(await asyncio.gather(*futs))

    async def _one(self, req: Request) -> Generation:
        text, images = chat_prompt(self.tok, req.messages)
        prompt = {"prompt": text, **({"multi_modal_data": {"image": images}} if images else {})}
        final = None
        async for out in self.engine.generate(prompt, self._params(req), request_id=f"kb-{next(self._ids)}"):
            final = out  # cumulative outputs: the last one holds the whole answer
        o = final.outputs[0]
        return Generation(o.text, len(final.prompt_token_ids or []), len(o.token_ids))

    def close(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
