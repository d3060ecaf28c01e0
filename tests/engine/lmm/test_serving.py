"""Serving plans, the vllm serve command (quantisation left to vLLM, tensor-parallel splits of whole
quantisation groups, data-parallel replicas), the in-process vLLM backend's arguments, the HTTP
backend's uploads and sampling, LMM config."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kbridge.engine.config import ConfigError, build_config
from kbridge.engine.lmm.serving import COMPACT_JSON, SERVE_PROFILES, ServeError, serve_command, wait_healthy
from kbridge.engine.lmm.vllm_local import VLLMBackend, llm_kwargs, vllm_usable
from kbridge.engine.zoo import ZOO_VERSION


def _flag(argv, name):
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("name", sorted(SERVE_PROFILES))
def test_serve_command_carries_the_plan(name, monkeypatch):
    monkeypatch.setenv("KBRIDGE_LMM_API_KEY", "s3cret")
    p = SERVE_PROFILES[name]
    argv, env = serve_command(p, "/models/x", port=8123)
    assert argv[:3] == ["vllm", "serve", "/models/x"] and "--enforce-eager" not in argv
    dp = int(_flag(argv, "--data-parallel-size")) if "--data-parallel-size" in argv else 1
    assert int(_flag(argv, "--tensor-parallel-size")) == p.tensor_parallel and dp == p.data_parallel
    assert p.tensor_parallel * p.data_parallel == len(p.devices.split(","))
    assert float(_flag(argv, "--gpu-memory-utilization")) == pytest.approx(p.gpu_memory_utilization)
    assert int(_flag(argv, "--max-model-len")) == p.max_model_len and _flag(argv, "--port") == "8123"
    assert json.loads(_flag(argv, "--limit-mm-per-prompt")) == {"image": 2, "video": 0}
    assert json.loads(_flag(argv, "--mm-processor-kwargs")) == {"max_pixels": p.max_pixels}
    assert "--quantization" not in argv  # vLLM picks gptq_marlin itself
    assert _flag(argv, "--generation-config") == "vllm"
    assert json.loads(_flag(argv, "--structured-outputs-config")) == COMPACT_JSON  # compact JSON on GPUs too
    assert "--enable-per-request-metrics" in argv and "--enable-prompt-tokens-details" in argv
    assert env == {"CUDA_VISIBLE_DEVICES": p.devices, "VLLM_API_KEY": "s3cret"}
    assert not any("s3cret" in a for a in argv)  # never on the command line


def test_dry_run_prints_the_command():
    r = subprocess.run([sys.executable, "-m", "kbridge.cli", "lmm", "serve", "--profile", "4090x4", "--dry-run"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[0]
    assert line.startswith("CUDA_VISIBLE_DEVICES=0,1 vllm serve ") and "--tensor-parallel-size 1" in line
    assert "--data-parallel-size 2" in line  # two 7B replicas beat TP 2 over PCIe
    assert "--limit-mm-per-prompt '{\"image\": 2, \"video\": 0}'" in line
    r = subprocess.run([sys.executable, "-m", "kbridge.cli", "lmm", "serve", "--profile", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown serving profile")


def test_wait_healthy_sees_a_dead_process_and_a_live_server(engine):
    from tests.helpers.openai_server import LMMServer

    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(ServeError, match="exited with code 3"):
        wait_healthy("http://127.0.0.1:9", proc, timeout_s=5, poll_s=0.05)
    with LMMServer(engine.models().lmm) as s:
        wait_healthy(f"http://127.0.0.1:{s.port}", None, timeout_s=10, poll_s=0.05)


def test_llm_kwargs_follow_the_profile(cfg, tmp_path):
    kw = llm_kwargs(tmp_path, cfg.lmm, "4090x4")
    assert kw["tensor_parallel_size"] == 1 and kw["limit_mm_per_prompt"] == {"image": 2, "video": 0}
    assert "enforce_eager" not in kw and "quantization" not in kw and kw["enable_prefix_caching"]
    kw = llm_kwargs(tmp_path, cfg.lmm, "edge")
    assert "quantization" not in kw and kw["dtype"] == "auto" and kw["gpu_memory_utilization"] == pytest.approx(0.38)
    assert llm_kwargs(tmp_path, cfg.lmm, "tiny")["tensor_parallel_size"] == 1


def test_cpu_engine_arguments_and_server_flags_agree(cfg, tmp_path):
    """vLLM's CPU platform: eager, an explicit KV cache, compact JSON, no chunked prefill with a step
    budget that holds a whole prompt: the same settings in-process and on the server."""
    from kbridge.engine.lmm.serving import cpu_serve_command
    from kbridge.engine.lmm.serving import COMPACT_JSON, CPU_KV_CACHE_BYTES

    kw = llm_kwargs(tmp_path, cfg.lmm, "tiny", cpu=True)
    assert kw["enforce_eager"] and kw["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES
    assert "gpu_memory_utilization" not in kw and kw["enable_chunked_prefill"] is False
    assert kw["max_num_batched_tokens"] >= kw["max_model_len"]
    assert kw["structured_outputs_config"] == COMPACT_JSON == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert llm_kwargs(tmp_path, cfg.lmm, "h100")["structured_outputs_config"] == COMPACT_JSON
    argv, env = cpu_serve_command(str(tmp_path / "twin"), port=8123, max_model_len=kw["max_model_len"], python="py")
    assert argv[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]  # not the broken `vllm` command
    assert "--enforce-eager" in argv and "--no-enable-chunked-prefill" in argv
    assert int(_flag(argv, "--max-num-batched-tokens")) >= int(_flag(argv, "--max-model-len"))
    assert json.loads(_flag(argv, "--structured-outputs-config")) == COMPACT_JSON
    assert "--enable-per-request-metrics" in argv and "--enable-prompt-tokens-details" in argv
    assert _flag(argv, "--host") == "127.0.0.1" and env["VLLM_CPU_KVCACHE_SPACE"] == str(CPU_KV_CACHE_BYTES >> 30)
    r = subprocess.run([sys.executable, "-m", "kbridge.cli", "lmm", "serve", "-p", "tiny", "--dry-run"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[0]
    assert line.startswith(f"VLLM_CPU_KVCACHE_SPACE=1 {sys.executable} -m vllm.entrypoints.openai.api_server --model ")
    assert f"tiny-lmm_vllm_cpu-v{ZOO_VERSION} --host 127.0.0.1 --port " in line


def test_in_process_vllm_backend(cfg):
    if not vllm_usable():
        pytest.skip("needs a CUDA GPU and the vllm extra: in-process vLLM (pip install 'kbridge[vllm]')")
    from kbridge.engine import zoo

    be = VLLMBackend(zoo.resolve("lmm", cfg), cfg.lmm, "tiny")
    assert be.model_id


def test_lmm_backend_config():
    with pytest.raises(ConfigError, match="unknown lmm.backend 'tgi'"):
        build_config("tiny", overrides={"lmm": {"backend": "tgi"}})
    with pytest.raises(ConfigError, match="needs a server URL"):
        build_config("tiny", overrides={"lmm": {"backend": "http"}})
    a = build_config("tiny", overrides={"lmm": {"backend": "http", "url": "http://127.0.0.1:1/v1"}})
    b = dataclasses.replace(a, lmm=dataclasses.replace(a.lmm, url="http://10.0.0.2:8000/v1", concurrency=4))
    assert a.result_hash() == b.result_hash()  # where the server is does not change the results
    assert build_config("h100").lmm.backend == "auto"


def test_gptq_is_left_to_vllm_autodetect(cfg, tmp_path):
    from kbridge.engine.lmm.serving import SERVE_PROFILES, serve_command
    from kbridge.engine.lmm.vllm_local import llm_kwargs

    for name in ("edge", "4090x4-72b"):
        argv, _ = serve_command(SERVE_PROFILES[name], "/m")
        assert "--quantization" not in argv and argv[argv.index("--dtype") + 1] == "auto"
        assert "quantization" not in llm_kwargs(tmp_path, cfg.lmm, name)


def test_tp_split_needs_whole_quantisation_groups(tmp_path):
    from kbridge.engine.lmm.serving import tp_split_error

    def ckpt(inter):
        d = tmp_path / str(inter)
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text(json.dumps({"intermediate_size": inter,
                                                   "quantization_config": {"quant_method": "gptq", "group_size": 128}}))
        return d

    assert "29696" in tp_split_error(ckpt(29568), 4) and tp_split_error(ckpt(29568), 2)
    assert tp_split_error(ckpt(29568), 1) is None and tp_split_error(ckpt(29696), 4) is None
    assert tp_split_error(tmp_path / "nothing-here", 4) is None  # nothing to check: vLLM will say


def test_http_uploads_follow_the_serve_profile_and_sampling_is_vllms(cfg):
    from kbridge.engine.lmm import Request
    from kbridge.engine.lmm.vllm_http import HTTPBackend

    for profile in ("h100", "4090x4", "edge"):
        assert build_config(profile).lmm.http_max_pixels == SERVE_PROFILES[profile].max_pixels, profile
    be = HTTPBackend(dataclasses.replace(cfg.lmm, backend="http", url="http://127.0.0.1:9/v1"), check=False)
    body = be.body(Request([{"role": "user", "content": [{"type": "text", "text": "x"}]}], None, 1, 8, 0.3,
                           "s", "t", 1))
    assert body["top_k"] == -1 and body["repetition_penalty"] == 1.0 and body["top_p"] == 1.0


def test_in_process_vllm_gets_the_plans_data_parallel_replicas():
    """4090x4: the plan places two LMM replicas; vLLM's engine args take ``data_parallel_size``
    (0.32 ``AsyncEngineArgs``; ``vllm serve --data-parallel-size`` is the same field)."""
    cfg = build_config("4090x4")
    kw = llm_kwargs(Path("m"), cfg.lmm, "4090x4")
    argv, _ = serve_command(SERVE_PROFILES["4090x4"], "m")
    assert kw["data_parallel_size"] == 2 == int(argv[argv.index("--data-parallel-size") + 1])
    assert "data_parallel_size" not in llm_kwargs(Path("m"), cfg.lmm, "h100")


def test_otlp_tracing_reaches_the_server_command(monkeypatch, tmp_path):
    """``kbridge lmm serve --otlp-traces-endpoint``: vLLM's flag, and the protocol vLLM reads
    (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, grpc when unset) set to kbridge's own exporter's."""
    from kbridge.engine.lmm.serving import cpu_serve_command, otlp_tracing

    for k in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        monkeypatch.delenv(k, raising=False)
    assert otlp_tracing(None) == ([], {})
    url = "http://127.0.0.1:4318/v1/traces"
    argv, env = cpu_serve_command(str(tmp_path), port=8123, python="py", otlp_traces_endpoint=url)
    assert _flag(argv, "--otlp-traces-endpoint") == url and env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    argv, env = serve_command(next(iter(SERVE_PROFILES.values())), "/models/x", otlp_traces_endpoint=url)
    assert _flag(argv, "--otlp-traces-endpoint") == url and env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert otlp_tracing("http://c:4317")[1] == {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")  # the traces variable wins
    with pytest.raises(ServeError, match="not 'http/json'"):
        otlp_tracing(url)
    assert "--otlp-traces-endpoint" not in cpu_serve_command(str(tmp_path), python="py")[0]
