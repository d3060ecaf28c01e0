"""GPU round 2 (issue 23, ../shared/reviews/gpu-audit-2.md) on the CPU: each test asserts the rule of
the library involved (read from its pinned source, cited beside the test, or reproduced with the
library installed here), not only our own constants."""
import dataclasses
import gc
import weakref
from pathlib import Path

import pytest
import torch

from tests.helpers.fake_lmm import FakeLMM
from kbridge.engine.api import Engine


class _ClosingLMM(FakeLMM):
    """The fake LMM with the one method the real in-process backend has for this: VLLMBackend.close()
    (→ vLLM 0.32 ``AsyncLLM.shutdown()``, v1/engine/async_llm.py)."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def close(self):
        self.log.append("closed")


def test_N2_N13_phased_release_drops_every_reference_and_closes_the_engine(cfg, engine, tmp_path, monkeypatch):
    """Between the LMM phase and render, the LMM is closed and no reference to it survives: a
    weakref to every LMM the run loaded is dead when the generators load (CPython frees an object
    once its last reference goes; gc.collect() breaks cycles), and close() ran once per LMM. N13:
    a stage that runs in several phases (load: phases 1, 3 and 4) runs on the same worker threads
    in all of them (thread-local state such as cudagraph trees is not rebuilt per phase), and the
    run ends them."""
    import threading

    from kbridge.engine.stages import STAGES

    threads = []
    load = STAGES["load"]
    monkeypatch.setitem(STAGES, "load", dataclasses.replace(
        load, fn=lambda rows, ctx: threads.append(threading.current_thread()) or load.fn(rows, ctx)))
    log, refs, seen = [], [], []
    eng = Engine(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, schedule="phased"),
                                     generation=dataclasses.replace(cfg.generation, candidates=1)))  # one render
    loaded = engine.models()

    def lmm():
        m = _ClosingLMM(log)
        refs.append(weakref.ref(m))
        return m

    def generators():
        gc.collect()
        seen.append(([r() is None for r in refs], list(log)))
        return loaded.generators

    eng.loaders.update(lmm=lmm, scorer=lambda: loaded.scorer, generators=generators)
    rep = eng.run(out=tmp_path / "o", limit=1)  # demo:0 is missing its image: render runs
    assert rep.completed == 1 and not rep.errors
    assert seen == [([True], ["closed"])]  # render loaded with the LMM gone: freed and shut down
    assert len(refs) == 2  # the candidate-knowledge phase loaded it again...
    assert len(threads) >= 3 and len(set(threads)) <= 2 and not any(t.is_alive() for t in threads)
    eng._models.release("lmm")
    gc.collect()
    assert refs[1]() is None and log == ["closed", "closed"]  # ...and a release closes that one too


# ------------------------------------------------------------------ the one-shot GPU check


def test_gpu_check_dry_run_writes_rows_as_measured_and_at_most_five_files(engine, tmp_path):
    """scripts/gpu_check.sh --dry-run: the GPU check's own script end to end on the CPU with the
    tiny twins (built by the ``engine`` fixture). The rows file is polled while the check runs: it
    must grow row by row (a row is on disk the moment it is measured, not at the end), every row is
    one JSON object with its section and status, and OUTDIR holds at most 5 files, 2 levels deep at
    most (the GPU machine returns at most 8 files, 2 folders down)."""
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.Popen(["bash", str(root / "scripts" / "gpu_check.sh"), "--dry-run", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    rows_file = out / "bench-rows.jsonl"
    while proc.poll() is None:
        if rows_file.exists():
            n = len(rows_file.read_text().splitlines())
            if not seen or n != seen[-1]:
                seen.append(n)
        time.sleep(0.05)
    log = proc.stdout.read()
    assert proc.returncode == 0, log
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert len(seen) >= 4 and seen == sorted(seen) and seen[0] < len(rows), (seen, log)  # grew while measured
    assert all({"section", "status"} <= set(r) for r in rows)
    env_row = rows[0]
    assert env_row["section"] == "env" and env_row["dry_run"] and "/shim/kbridge/" in env_row["kbridge_from"]
    measured = {r["section"] for r in rows if r["status"] == "ok"}
    assert {"env", "unet"} <= measured, rows
    steps = {line.split("\t")[0]: line.split("\t")[1] for line in (out / "steps.tsv").read_text().splitlines()}
    told = {r["section"] for r in rows}  # a section is measured, skipped or failed, each said in a row...
    if steps["bench"] == "0":  # ...unless the hard time limit stopped the bench (a busy machine)
        assert told == {"env", "unet", "vae", "lmm", "clip", "maxsim", "compile"}, rows
    for r in rows:
        if r["status"] == "ok" and "ms_p50" in r:
            assert r["ms_p50"] > 0 and (r["tflops"] or r["gbps"] or r["name"].startswith("MaxSim")), r
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 5 and all(len(p.relative_to(out).parts) <= 3 for p in files), files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["wall_s"] <= 75, summary  # the 60 s budget + the summary's own time
    assert summary["tests"].get("passed", 0) == 0  # no GPU here: every GPU test skips, none reports a pass
    assert {s["name"] for s in summary["steps"]} >= {"import", "bench", "kernels"}


# ------------------------------------------------------------------ the memory plan (N3, N8, N9)


def test_N3_plan_books_vllms_reservation_and_reads_gpu_sizes_as_gib():
    """vLLM 0.32 reserves ``gpu_memory_utilization × total`` on each GPU (``total`` from
    ``torch.cuda.mem_get_info``, bytes) and refuses to start when less is free (v1/worker/utils.py,
    config/cache.py). With the h100 profile's 0.5 on a 56 GiB card that is 30.1 GB, plus SDXL's
    28.5 and CLIP's 1.8: more than the card, so the plan must not fuse."""
    import subprocess
    import sys

    from kbridge.engine.config import build_config
    from kbridge.engine.lmm.serving import SERVE_PROFILES
    from kbridge.engine.lmm.vllm_local import llm_kwargs
    from kbridge.engine.plan import apply_plan, make_plan, needs, parse_gpus

    total = 56 * 2 ** 30 / 1e9  # what mem_get_info reports for a 56 GiB card, in GB
    assert parse_gpus("1x56GB")[0].total_gb == pytest.approx(total, abs=0.01)
    cfg = build_config("h100")
    n = needs(cfg)
    assert SERVE_PROFILES["h100"].gpu_memory_utilization * total + n["diffusion"] + 1.8 > total
    r = subprocess.run([sys.executable, "-m", "kbridge.cli", "plan", "-p", "h100", "--gpus", "1x56GB"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("schedule: phased"), r.stdout
    p = make_plan(cfg, parse_gpus("1x80GB"))
    lmm = next(x for x in p["gpus"][0]["placements"] if x["role"] == "lmm")
    assert lmm["gb"] == pytest.approx(0.5 * 80 * 2 ** 30 / 1e9, abs=0.01) and p["schedule"] == "fused"
    # edge: the profile's 0.38 of 24 GiB (9.8 GB) is less than the LMM's 10.2 GB: the plan raises it and
    # the run's in-process vLLM gets the raised value
    edge = build_config("edge", overrides={"lmm": {"backend": "vllm"}})
    pe = make_plan(edge, parse_gpus("1x24GB"))
    assert pe["lmm_gpu_memory_utilization"] == 0.40 and any("raised" in w for w in pe["reasoning"])
    placed = apply_plan(edge, pe)
    assert llm_kwargs(Path("m"), placed.lmm, "edge")["gpu_memory_utilization"] == 0.40
    assert llm_kwargs(Path("m"), edge.lmm, "edge")["gpu_memory_utilization"] == 0.38  # no plan: the profile's


def test_N5_in_process_vllm_gets_the_plans_data_parallel_replicas():
    """4090x4: the plan places two LMM replicas; vLLM's engine args take ``data_parallel_size``
    (0.32 ``AsyncEngineArgs``; ``vllm serve --data-parallel-size`` is the same field)."""
    from kbridge.engine.config import build_config
    from kbridge.engine.lmm.serving import SERVE_PROFILES, serve_command
    from kbridge.engine.lmm.vllm_local import llm_kwargs

    cfg = build_config("4090x4")
    kw = llm_kwargs(Path("m"), cfg.lmm, "4090x4")
    argv, _ = serve_command(SERVE_PROFILES["4090x4"], "m")
    assert kw["data_parallel_size"] == 2 == int(argv[argv.index("--data-parallel-size") + 1])
    assert "data_parallel_size" not in llm_kwargs(Path("m"), cfg.lmm, "h100")


def test_N8_clip_scorer_is_booked_as_loaded_fp32():
    """The scorer loads CLIP in float32 (transformers' default dtype): the plan's figure must hold
    the real CLIP ViT-L/14's parameters (transformers' CLIPModel at the published config, counted on
    the meta device) at 4 bytes each."""
    from kbridge.engine import fullsize as F
    from kbridge.engine import zoo
    from kbridge.engine.config import build_config
    from kbridge.engine.plan import CLIP_L_GB
    from kbridge.engine.rank.semantic import ClipScorer

    cfg = build_config("tiny")
    scorer = ClipScorer(zoo.resolve("clip", cfg), "cpu")
    assert {p.dtype for p in scorer.model.parameters()} == {torch.float32}
    params = F.param_counts(("clip",))["clip"]
    assert params * 4 / 1e9 <= CLIP_L_GB <= params * 4 / 1e9 + 0.2


def test_N9_72b_gptq_int8_size_from_the_published_shapes():
    """Qwen2-VL-72B-Instruct-GPTQ-Int8: each decoder Linear stores int8 weights, one fp16 scale and
    one 8-bit zero (packed in int32) per 128 inputs of each output (GPTQ's layout, as vLLM's
    gptq_marlin reads it); embeddings, LM head, norms, biases and the 675M-parameter vision tower stay
    in 16 bits. The decoder's shapes come from transformers' Qwen2 model at the published config,
    built on the meta device."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from kbridge.engine.plan import LMM_GB

    cfg = Qwen2Config(vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                      num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False)
    with torch.device("meta"):
        m = Qwen2ForCausalLM(cfg)
    lin = [mod for name, mod in m.model.layers.named_modules() if isinstance(mod, torch.nn.Linear)]
    q = sum(mod.weight.numel() for mod in lin)
    per_group = sum(mod.out_features * (mod.in_features // 128) for mod in lin)
    rest = sum(p.numel() for p in m.parameters()) - q
    total = (q * 1 + per_group * (2 + 1) + rest * 2 + 675e6 * 2) / 1e9
    assert total == pytest.approx(78.2, abs=0.3)  # the audit's arithmetic
    assert total <= LMM_GB["Qwen2-VL-72B-Instruct-GPTQ-Int8"] <= total + 0.5


# ------------------------------------------------------------------ N1: the run owns the LMM server

_FAKE_VLLM = r'''#!/usr/bin/env python3
"""Stands in for `vllm serve MODEL --host H --port P ...`: the two routes vLLM's server has that the
HTTP backend uses at start (/health, /v1/models); records its argv; exits on SIGTERM."""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
a = sys.argv
open(a[0] + ".argv", "a").write(json.dumps(a[1:]) + "\n")
host, port, model = a[a.index("--host") + 1], int(a[a.index("--port") + 1]), a[a.index("--served-model-name") + 1]
class H(BaseHTTPRequestHandler):
    def log_message(self, *x): pass
    def do_GET(self):
        body = json.dumps({"data": [{"id": model}]}).encode() if self.path.endswith("/models") else b"{}"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
HTTPServer((host, port), H).serve_forever()
'''


def test_N1_phased_http_profile_starts_the_server_and_release_stops_it(tmp_path):
    """4090x4-72b: `kbridge run` starts the profile's `vllm serve` when the LMM slot loads and the
    phased release (Models.release → close(), test_N2 above) stops it, process group and port, before
    render. A server already on the port is refused in one line rather than shared."""
    import json
    import os
    import socket

    import httpx2 as httpx

    from kbridge.engine.config import build_config
    from kbridge.engine.lmm.lifecycle import ServedBackend
    from kbridge.engine.lmm.serving import ServeError
    from kbridge.engine.models import Models

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake = tmp_path / "vllm"
    fake.write_text(_FAKE_VLLM)
    fake.chmod(0o755)
    cfg = build_config("4090x4-72b", overrides={"lmm": {"url": f"http://127.0.0.1:{port}/v1"}})
    assert cfg.lmm.manage_server and cfg.run.schedule == "phased"
    backend = ServedBackend(cfg, str(tmp_path / "Qwen2-VL-72B"), vllm_bin=str(fake), wait_s=60, stop_s=10)
    pid = backend.server.proc.pid
    assert backend.model_id == "http:Qwen2-VL-72B"
    argv = json.loads((tmp_path / "vllm.argv").read_text().splitlines()[0])
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.95"
    with pytest.raises(ServeError, match="already answers"):
        ServedBackend(cfg, "m", vllm_bin=str(fake), wait_s=5)
    Models(lmm=backend).release("lmm")
    assert backend.server.proc.returncode is not None  # exited, reaped
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing of its process group is left
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


# ------------------------------------------------------------------ A6 / N10: torch-TensorRT's copies


def test_A6_torch_tensorrt_copies_on_the_cpu_and_releases_the_pipelines_weights(cfg, monkeypatch):
    """The module torch-TensorRT compiles is copied without ``Tensor.__deepcopy__`` on any of its
    weights (on a GPU that call allocates the copy there: torch's ``Tensor.__deepcopy__`` clones
    on the tensor's own device, ``Parameter.__deepcopy__`` clones its data there), values equal, storage separate; and under the torch_tensorrt
    backend swap_sdxl releases the pipeline's own UNets and text encoders (the real diffusers
    pipeline, the runner faked at its boundary)."""
    import copy
    from dataclasses import replace

    from diffusers import UNet2DConditionModel

    from kbridge.engine import zoo
    from kbridge.engine.generate.sdxl import SDXLGenerator
    from kbridge.engine.runtime.swap import swap_sdxl
    from kbridge.engine.runtime.torch_runner import torch_runner
    from kbridge.engine.runtime.torch_trt import cpu_copy

    unet = UNet2DConditionModel.from_pretrained(zoo.resolve("sdxl_base", cfg) / "unet")
    cloned = []
    for cls in (torch.Tensor, torch.nn.Parameter):  # Parameter has its own __deepcopy__ (data.clone())
        monkeypatch.setattr(cls, "__deepcopy__", lambda self, memo, real=cls.__deepcopy__: cloned.append(1) or
                            real(self, memo))
    copy.deepcopy(torch.nn.BatchNorm1d(3))
    assert len(cloned) == 5  # the probe sees a plain deepcopy's clones (2 parameters, 3 buffers)...
    cloned.clear()
    c = cpu_copy(unet)
    monkeypatch.undo()
    assert not cloned  # ...and none in ours: every weight came from the CPU copies
    pairs = list(zip(unet.state_dict().values(), c.state_dict().values()))
    assert pairs and all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in pairs)

    base, refiner = zoo.resolve("sdxl_base", cfg), zoo.resolve("sdxl_refiner", cfg)
    trt_cfg = replace(cfg, runtime=replace(cfg.runtime, backend="torch_tensorrt"))
    make = lambda ex, c_, dev: torch_runner(ex.spec, copy.deepcopy(ex.module))  # noqa: E731 (holds its own copy)
    gen = SDXLGenerator(base, refiner, cfg.generation, swap=lambda b, r: swap_sdxl(b, r, base, refiner, trt_cfg, make))
    for m in (gen.base.unet, gen.base.text_encoder, gen.base.text_encoder_2, gen.refiner.unet):
        assert m.released and all(p.device.type == "meta" for p in m.inner.parameters())


# ------------------------------------------------------------------ G2: faiss-gpu's IVF-PQ rule


def test_G2_ivfpq_goes_to_the_gpu_only_as_faiss_gpu_accepts_it(monkeypatch):
    """Real faiss-cpu IVF-PQ indexes (their ``pq.M`` / ``pq.nbits`` as faiss built them), the GPU
    copy stubbed (faiss-cpu has none): faiss-gpu's ``IVFPQ::isSupportedPQCodeLength`` accepts code
    sizes 1, 2, 3, 4, 8, 12, …, 48, 56, 64, 96 only (faiss/gpu/impl/IVFPQ.cu) and, without the
    interleaved layout, 8 bits per code only (GpuIndexIVFPQ). Anything else stays on the CPU."""
    import numpy as np

    faiss = pytest.importorskip("faiss")
    from kbridge.engine.rank import index as I

    clones = []
    monkeypatch.setattr(I, "gpu_count", lambda: 2)
    monkeypatch.setattr(I, "_RESOURCES", {})
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: type("R", (), {"setTempMemory": lambda s, b: None})(),
                        raising=False)
    monkeypatch.setattr(faiss, "GpuClonerOptions", lambda: type("O", (), {})(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, dev, idx, opts: clones.append(
        (faiss.downcast_index(idx).pq.M, opts.useFloat16)) or idx, raising=False)
    rng = np.random.default_rng(0)

    def build(n, d):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return I.EmbeddingIndex.build(x / np.linalg.norm(x, axis=1, keepdims=True), "ivfpq", use_gpu=True,
                                      device="cuda:1")

    small = build(120, 16)  # 120 vectors: fewer than 8 bits per code (k-means' 39 points per centroid)
    assert faiss.downcast_index(small.index).pq.nbits < 8 and clones == []

    def made(d, m, bits):  # faiss' own IndexIVFPQ (untrained: only its shape is read)
        return I.EmbeddingIndex(faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, 1, m, bits), "ivfpq", d)._to_gpu(
            True, "cuda:1")

    made(48, 6, 8)  # 6 bytes per code: not a size faiss-gpu supports
    made(64, 8, 4)  # 4 bits per code
    assert clones == []
    made(64, 8, 8)
    made(512, 64, 8)  # only with float16 lookup tables
    assert clones == [(8, False), (64, True)]
    assert I.gpu_ivfpq_refusal(6, 8) and I.gpu_ivfpq_refusal(8, 4) and I.gpu_ivfpq_refusal(96, 8) is None


# ------------------------------------------------------------------ N4, N7, N11: the VAE decode


def _tiny_vae(cfg, dtype=torch.float32):
    from diffusers import AutoencoderKL

    from kbridge.engine import zoo

    return AutoencoderKL.from_pretrained(zoo.resolve("sdxl_base", cfg) / "vae").to(dtype).eval()


def _decoder_calls(vae):
    calls = []
    vae.decoder.register_forward_pre_hook(lambda m, a: calls.append((a[0].shape[0], a[0].dtype)))
    return calls


def test_N4_gpu_profiles_decode_one_image_at_a_time_also_through_a_runner(cfg):
    """diffusers' AutoencoderKL with slicing decodes a batch one image at a time (its decoder runs
    once per image): the fp32 peak is one image's, the plan's figure. GPU profiles turn it on, and a
    compiled VAE (RunnerVae) keeps that rule."""
    from kbridge.engine.config import build_config
    from kbridge.engine.runtime.swap import RunnerVae

    for p in ("h100", "4090x4", "4090x4-72b", "edge"):
        assert build_config(p).generation.vae_slicing, p
    vae = _tiny_vae(cfg)
    calls = _decoder_calls(vae)
    z = torch.randn(3, 4, 8, 8)
    with torch.inference_mode():
        ref = vae.decode(z).sample
        assert [c[0] for c in calls] == [3]
        vae.enable_slicing()
        calls.clear()
        assert torch.allclose(vae.decode(z).sample, ref, atol=1e-5) and [c[0] for c in calls] == [1, 1, 1]
        seen = []
        runner = lambda d: seen.append(d["latents"].shape[0]) or {"image": vae.decode(d["latents"]).sample}  # noqa: E731
        out = RunnerVae(vae, runner).decode(z).sample
    assert seen == [1, 1, 1] and torch.allclose(out, ref, atol=1e-5)


def test_N7_vae_preview_upcasts_like_diffusers_and_bypasses_a_compiled_vae(cfg):
    """diffusers' SDXL pipelines decode an fp16 VAE with ``force_upcast`` in fp32 (the stock SDXL VAE
    overflows in fp16); the preview does the same, gives the VAE back in fp16, and never sends its
    half-size latents to a compiled decoder (whose spec is the full size)."""
    from kbridge.engine.generate.sdxl import decode_upcast
    from kbridge.engine.runtime.swap import RunnerVae

    vae = _tiny_vae(cfg, torch.float16)
    assert vae.config.force_upcast  # the SDXL VAE's published config says so too
    calls = _decoder_calls(vae)
    z = torch.randn(2, 4, 4, 4)
    with torch.inference_mode():
        out = decode_upcast(RunnerVae(vae, lambda d: pytest.fail("the runner got the preview")), z)
    assert calls == [(2, torch.float32)] and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert vae.dtype == torch.float16
    vae.register_to_config(force_upcast=False)  # e.g. the fp16-fix VAE: decoded in its own dtype
    calls.clear()
    with torch.inference_mode():
        decode_upcast(vae, z)
    assert calls == [(2, torch.float16)]


def test_N11_a_tiled_vae_stays_in_torch_under_a_compiled_backend(cfg):
    """edge tiles the VAE decode (diffusers' ``enable_tiling``); a compiled decoder is full-frame, so
    under onnx / tensorrt the torch VAE (which tiles) stays and no decoder runner is built."""
    import copy
    from dataclasses import replace

    from kbridge.engine import zoo
    from kbridge.engine.generate.sdxl import SDXLGenerator
    from kbridge.engine.runtime.swap import RunnerVae, swap_sdxl
    from kbridge.engine.runtime.torch_runner import torch_runner

    base, refiner = zoo.resolve("sdxl_base", cfg), zoo.resolve("sdxl_refiner", cfg)
    built = []
    make = lambda ex, c, dev: built.append(ex.spec.name) or torch_runner(ex.spec, copy.deepcopy(ex.module))  # noqa: E731
    g = replace(cfg.generation, vae_tiling=True)
    onnx = replace(cfg, generation=g, runtime=replace(cfg.runtime, backend="onnx"))
    gen = SDXLGenerator(base, refiner, g, swap=lambda b, r: swap_sdxl(b, r, base, refiner, onnx, make))
    assert not isinstance(gen.base.vae, RunnerVae) and gen.base.vae.use_tiling and gen.refiner.vae is gen.base.vae
    assert "sdxl_base.vae_decoder" not in built and "sdxl_base.unet" in built


# ------------------------------------------------------------------ N6: one TensorRT scratch per pipeline


def test_N6_trt_engines_of_one_pipeline_share_one_scratch_sized_for_the_largest(monkeypatch):
    """TensorRT's USER_MANAGED contexts run on whatever buffer ``set_device_memory`` gives them (at
    least the engine's ``device_memory_size_v2``), which may be re-pointed before use; NVIDIA's
    demoDiffusion (v11.0, diffusion_pipeline.py) gives every engine of the pipeline one buffer, the
    max over them. Faked at TensorRT's API: the render engines share one buffer that grows to the
    largest need until a graph captures it, the CLIP towers have their own, and dropping the
    runners frees it."""
    import gc
    import types

    from kbridge.engine.runtime import trt as T

    class Ctx:
        def set_device_memory(self, ptr, size):
            self.mem = (ptr, size)

    def runner(name, need, device="cuda:0"):
        r = object.__new__(T.TrtRunner)
        r.trt = types.SimpleNamespace(ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED=0))
        r.engine = types.SimpleNamespace(create_execution_context=lambda strategy: Ctx())
        r.spec, r.device, r.need, r.own = types.SimpleNamespace(name=name), torch.device(device), need, None
        r.shared = T.shared_scratch(r.device, T.scratch_group(r.spec))
        return r

    monkeypatch.setattr(T, "_SHARED", __import__("weakref").WeakValueDictionary())
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, device=None, **k: real_empty(*a, **k))  # CUDA buffers → CPU
    te, unet, vae, clip = runner("sdxl_base.text_encoder", 100), runner("sdxl_base.unet", 4000), \
        runner("sdxl_base.vae_decoder", 9000), runner("clip.vision", 300)
    ctxs = [te._context(), unet._context(), vae._context(), te._context()]
    assert {c.mem for c in ctxs} == {(te.shared.buf.data_ptr(), 9000)}  # one buffer, the largest need
    assert clip._context().mem[1] == 300 and clip.shared is not te.shared
    te.shared.frozen = True  # a graph captured the address: a bigger engine gets its own buffer
    big = runner("sdxl_refiner.unet", 20000)
    assert big._context().mem[1] == 20000 and big.own is not None and ctxs[0].mem[1] == 9000
    ref = __import__("weakref").ref(te.shared)
    del te, unet, vae, big, ctxs
    gc.collect()
    assert ref() is None and ("cuda:0", "render") not in T._SHARED
