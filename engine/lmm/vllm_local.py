"""In-process vLLM (the async engine, ``AsyncLLM``): continuous batching across every caller, with
schema-guided JSON, on a GPU box or (vllm-cpu, CPU engine arguments) a CPU one.

vLLM is imported only here and only when this backend is built. Every request goes to the engine
on its own as soon as it is made (``AsyncLLM.generate``), so the engine's scheduler batches all
requests in flight — the two in-flight pipeline batches and the concurrent stages — continuously,
reuses shared prompt prefixes, and compiles each JSON schema to a grammar
(``StructuredOutputsParams(json=...)``). The engine lives on its own event loop in a background
thread (it binds to the loop it starts on; ``Engine.run`` starts a fresh loop per run). Prompts are
rendered with the checkpoint's chat template and images are handed over as PIL images (no PNG /
base64 round trip). Each request has its own seed, so an answer does not depend on what it was
batched with. Serving settings (tensor parallelism, memory fraction, context length) come from
the profile's ``ServeProfile``. A failing request (vLLM's own message) fails only its sample; a
dead engine fails every request in flight and after it with one clear message each, and sets
``dead`` (the executor then stops admitting samples).
"""
from __future__ import annotations

import asyncio
import importlib.util
import itertools
import threading
from pathlib import Path
from typing import Sequence

from kbridge.engine.config import LMMConfig
from kbridge.engine.lmm import Generation, Request
from kbridge.engine.lmm.serving import COMPACT_JSON, CPU_KV_CACHE_BYTES, DEFAULT_LOCAL, SERVE_PROFILES
from kbridge.engine.errors import Unavailable


class BackendUnavailable(Unavailable, RuntimeError):
    """The in-process vLLM backend cannot run here (no vllm package, or a platform other than CUDA / CPU)."""


def vllm_installed() -> bool:
    """The vllm package (a directory named vllm on sys.path, e.g. tests/vllm, is not it)."""
    spec = importlib.util.find_spec("vllm")
    return spec is not None and not (spec.origin is None and spec.submodule_search_locations is not None)


def vllm_usable() -> bool:
    """``auto`` picks vLLM: the vllm extra is installed and a CUDA GPU is visible (on CPU, hf stays
    the default: vLLM on CPU is chosen explicitly, backend "vllm")."""
    if not vllm_installed():
        return False
    import torch

    return torch.cuda.is_available()


def vllm_platform() -> str:
    """vLLM's own platform ("cuda", "cpu", ...), or "" without vLLM."""
    if not vllm_installed():
        return ""
    from vllm.platforms import current_platform

    return "cuda" if current_platform.is_cuda() else "cpu" if current_platform.is_cpu() else \
        str(getattr(current_platform, "device_type", "?"))


def model_dir(cfg) -> Path:
    """The checkpoint the vllm backend loads: ``models.lmm``, except that a twin size on vLLM's CPU
    platform means the Idefics3 twin (vLLM's Qwen2-VL needs torchvision, which has no CPU wheel)."""
    from kbridge.engine import zoo

    if cfg.models.lmm in zoo.SIZES and vllm_platform() == "cpu":
        return zoo.ensure_tiny("lmm_vllm_cpu", cfg.cache_dir(), cfg.models.lmm_vllm_cpu)
    return zoo.resolve("lmm", cfg)


def llm_kwargs(path: Path, cfg: LMMConfig, profile: str, cpu: bool = False) -> dict:
    """Engine arguments (``AsyncEngineArgs`` / ``vllm.LLM``) for a profile (pure: testable without vLLM).

    ``cpu``: vLLM's CPU engine: eager (no compile warm-up), an explicit KV-cache size, and no
    chunked prefill (vllm-cpu 0.32 dies on a seeded request whose prefill is chunked: "CPU
    Generator does not use offset"), so a whole prompt must fit one step's token budget."""
    p = SERVE_PROFILES.get(profile, DEFAULT_LOCAL)
    kw = dict(model=str(path), tensor_parallel_size=p.tensor_parallel,
              gpu_memory_utilization=cfg.gpu_memory_utilization or p.gpu_memory_utilization,  # the plan's, if set
              max_model_len=p.max_model_len, max_num_seqs=max(p.max_num_seqs, cfg.max_batch),
              limit_mm_per_prompt={"image": p.images_per_prompt, "video": 0},
              mm_processor_kwargs={"min_pixels": cfg.image_min_pixels, "max_pixels": cfg.image_max_pixels},
              dtype="auto" if p.quantization else cfg.dtype, enable_prefix_caching=True,
              generation_config="vllm", seed=0, structured_outputs_config=dict(COMPACT_JSON))
    if p.data_parallel > 1:  # the plan's replicas (4090x4: GPUs 0 and 1), as `lmm serve` runs them
        kw["data_parallel_size"] = p.data_parallel
    if cpu:
        kw.update(enforce_eager=True, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enable_chunked_prefill=False,
                  max_num_batched_tokens=p.max_model_len, mm_processor_kwargs={})
        kw.pop("gpu_memory_utilization")
        kw.pop("data_parallel_size", None)
    return kw  # no quantization=: vLLM detects GPTQ from the checkpoint and picks gptq_marlin


def engine_timings(out) -> dict:
    """Queue, prefill (to the first token) and decode (first to last token) seconds of a finished
    ``RequestOutput``, and its prompt tokens served from the prefix cache."""
    m = getattr(out, "metrics", None)
    t = {"cached_prompt_tokens": int(getattr(out, "num_cached_tokens", 0) or 0)}
    if m is None:
        return t
    q, s, f, l = (getattr(m, k, 0.0) or 0.0 for k in ("queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts"))
    if s and q:
        t["queue_s"] = round(max(0.0, s - q), 6)
    if f and s:
        t["prefill_s"] = round(max(0.0, f - s), 6)
    if l and f:
        t["decode_s"] = round(max(0.0, l - f), 6)
    return t


def chat_prompt(tok, messages: list[dict]) -> tuple[str, list]:
    """(prompt text from the chat template, the PIL images in order) of one request's messages."""
    images = [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]
    msgs = [{"role": m["role"], "content": [{"type": "image"} if p["type"] == "image" else
                                             {"type": "text", "text": p["text"]} for p in m["content"]]}
            for m in messages]
    return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), images


class VLLMBackend:
    """``model_id`` and ``async generate(requests)`` over an in-process ``AsyncLLM``."""

    continuous_batching = True

    def __init__(self, path: Path, cfg: LMMConfig, profile: str = "tiny"):
        platform = vllm_platform()
        if not platform:
            raise BackendUnavailable("the vllm LMM backend needs vLLM: pip install 'kbridge[vllm]' on a GPU box, "
                                     "bash scripts/vllm_env.sh on CPU")
        if platform not in ("cuda", "cpu"):
            raise BackendUnavailable(f"the vllm LMM backend runs on vLLM's cuda or cpu platform, not {platform!r}")
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from kbridge.engine.lmm.hf import model_fingerprint

        self.cfg = cfg
        self.dead: str | None = None
        """Set when a request finds the engine core dead (vLLM's ``EngineDeadError``)."""
        self.model_id = model_fingerprint(Path(path))
        self.tok = AutoTokenizer.from_pretrained(path)
        self._ids = itertools.count()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="kbridge-vllm", daemon=True).start()
        from vllm.config import StructuredOutputsConfig

        kw = llm_kwargs(Path(path), cfg, profile, cpu=platform == "cpu")
        kw["structured_outputs_config"] = StructuredOutputsConfig(**kw["structured_outputs_config"])
        args = AsyncEngineArgs(**kw)

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
        """One request; its failure (vLLM's message) or the engine's death is this request's error."""
        if self.dead:
            return Generation("", 0, 0, error=f"vLLM: {self.dead}")
        final = None
        try:
            text, images = chat_prompt(self.tok, req.messages)
            prompt = {"prompt": text, **({"multi_modal_data": {"image": images}} if images else {})}
            async for out in self.engine.generate(prompt, self._params(req), request_id=f"kb-{next(self._ids)}"):
                final = out  # cumulative outputs: the last one holds the whole answer
        except Exception as e:  # noqa: BLE001 - reported per request, never raised into the batch
            msg = error_message(e)
            if type(e).__name__ == "EngineDeadError" and not self.dead:
                self.dead = msg
            return Generation("", 0, 0, error=f"vLLM: {msg}")
        if final is None or not final.outputs:
            return Generation("", 0, 0, error="vLLM: the engine returned no output")
        o = final.outputs[0]
        return Generation(o.text, len(final.prompt_token_ids or []), len(o.token_ids), engine=engine_timings(final))

    def close(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)


def error_message(e: BaseException) -> str:
    """vLLM's own message: an ``EngineGenerateError`` carries it in its cause; a dead engine says so."""
    if type(e).__name__ == "EngineDeadError":  # vllm.v1.engine.exceptions
        return "the engine died (see its log above); restart kbridge: a re-run resumes"
    parts = []
    while e is not None and len(parts) < 3:
        msg = str(e).strip()
        parts.append(f"{type(e).__name__}: {msg}" if msg else type(e).__name__)
        e = e.__cause__ or e.__context__
    return "; caused by ".join(parts)
