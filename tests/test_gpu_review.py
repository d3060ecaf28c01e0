"""The GPU review's findings (/work/shared/reviews/gpu-paths.md), tested on the CPU up to the GPU
boundary: device selection, build plans, profile shapes, flags, and the device each tensor is
created on, with the GPU libraries (TensorRT, torch-tensorrt, vLLM, faiss-gpu, xgrammar's
kernels) replaced by fakes at their boundary. The GPU side is tests/gpu/ (marker ``gpu``).

The ``meta`` device stands in for a GPU where a test needs "not the CPU": torch refuses to mix a
CPU tensor into a meta computation exactly as it refuses to mix it into a CUDA one.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kbridge.engine.config import build_config


# ------------------------------------------------------------------ F: the hf backend on CUDA


class _FakeXgr:
    """xgrammar at its boundary: a host bitmask, and an apply that demands the logits' device."""

    def __init__(self):
        self.applied = []

    @staticmethod
    def allocate_token_bitmask(batch, vocab):
        return torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)

    def apply_token_bitmask_inplace(self, logits, bitmask, vocab_size, indices):
        if bitmask.device != logits.device:  # what xgrammar raises on CUDA logits + a CPU bitmask
            raise RuntimeError("logits and bitmask should be on the same device")
        self.applied.append((logits.device, bitmask.device, list(indices)))


class _Matcher:
    def fill_next_token_bitmask(self, bitmask, i):
        assert bitmask.device.type == "cpu"  # xgrammar's matchers write host memory
        bitmask[i].fill_(-1)

    def accept_token(self, tok):
        return True


def _sampler(monkeypatch, greedy=False):
    from kbridge.engine.lmm import hf

    fake = _FakeXgr()
    monkeypatch.setitem(sys.modules, "xgrammar", fake)
    s = hf._GuidedSampler([_Matcher(), None], [1, 2], [0.7, 0.3], [50, 50], eos=3, banned=[4, 5], vocab=40,
                          greedy=greedy)
    return s, fake


def test_gpu_review_F1_bitmask_meets_the_logits_on_their_device(monkeypatch):
    s, fake = _sampler(monkeypatch, greedy=True)
    out = s(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 40, device="meta"))
    assert out.device.type == "meta"
    assert fake.applied == [(torch.device("meta"), torch.device("meta"), [0])]


def test_gpu_review_F2_temperatures_banned_ids_and_noise_on_the_logits_device(monkeypatch):
    s, _ = _sampler(monkeypatch)
    out = s(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 40, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 40)
    assert s.temps.device.type == "meta" and s.banned.device.type == "meta"
    # CUDA logits get CUDA generators; CPU / meta logits the CPU's (same numbers as before on CPU)
    assert all(g.device.type == "cpu" for g in s.gens)


def test_gpu_review_F2_cpu_sampling_unchanged_and_per_row(monkeypatch):
    """On the CPU the noise is what each row's own generator draws: the same whatever the batch."""
    from kbridge.engine.lmm import hf

    monkeypatch.setitem(sys.modules, "xgrammar", _FakeXgr())
    scores = torch.randn(2, 40, generator=torch.Generator().manual_seed(0))
    both = hf._GuidedSampler([None, None], [1, 2], [0.7, 0.7], [9, 9], 3, [], 40, False)(None, scores.clone())
    alone = hf._GuidedSampler([None], [2], [0.7], [9], 3, [], 40, False)(None, scores[1:].clone())
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=0)
    u = torch.rand(40, generator=torch.Generator().manual_seed(1)).clamp_(1e-20, 1.0)
    torch.testing.assert_close(both[0], scores[0] / 0.7 - torch.log(-torch.log(u)), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ A: native TensorRT


class _CudaDevice:
    """torch.cuda.device at its boundary: records which device is current inside the block."""

    current = [0]

    def __init__(self, d):
        self.idx = torch.device(d).index if not isinstance(d, int) else d

    def __enter__(self):
        self.prev = _CudaDevice.current[0]
        _CudaDevice.current[0] = self.idx

    def __exit__(self, *a):
        _CudaDevice.current[0] = self.prev


def _fake_trt(version="11.0.0", flags=("TF32",)):
    seen = {"flags": [], "builder_device": None}
    trt = types.SimpleNamespace(__version__=version)
    trt.BuilderFlag = types.SimpleNamespace(**{f: f for f in flags})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="ws")
    trt.Logger = type("Logger", (), {"WARNING": 1, "__init__": lambda self, level=0: None})

    class Config:
        def set_memory_pool_limit(self, *a): pass
        def set_flag(self, f): seen["flags"].append(f)
        def create_timing_cache(self, b): return b
        def set_timing_cache(self, c, ignore_mismatch): pass
        def add_optimization_profile(self, p): pass
        def get_timing_cache(self): return types.SimpleNamespace(serialize=lambda: b"tc")

    class Builder:
        def __init__(self, logger): seen["builder_device"] = _CudaDevice.current[0]
        def create_network(self, flags): return object()
        def create_builder_config(self): return Config()
        def create_optimization_profile(self): return types.SimpleNamespace(set_shape=lambda *a: None)
        def build_serialized_network(self, net, cfg):
            seen["build_device"] = _CudaDevice.current[0]
            return b"engine"

    trt.Builder = Builder
    trt.OnnxParser = lambda net, log: types.SimpleNamespace(parse_from_file=lambda p: True, num_errors=0)
    return trt, seen


def _plan(tmp_path, fp16, version="11.0.0", device="cuda:2"):
    from kbridge.export.specs import Axis, ExportSpec, TensorSpec
    from kbridge.export.tensorrt import plan_build

    spec = ExportSpec("m", (TensorSpec("x", ("batch", 4)),), (TensorSpec("y", ("batch", 4)),),
                      (Axis("batch", 1, 2, 8, 2),))
    (tmp_path / "m.onnx").write_bytes(b"")
    return plan_build(spec, tmp_path / "m.onnx", tmp_path / "out" / "model.plan", tmp_path,
                      {"tensorrt": version, "compute_capability": "8.9"}, fp16, device)


def test_gpu_review_A1_tensorrt11_fp16_builds_set_no_fp16_flag(tmp_path, monkeypatch):
    from kbridge.export.onnx import ExportError
    from kbridge.export.tensorrt import build_engine, precision_flags

    assert precision_flags("11.0.0", True) == ("TF32",) and precision_flags("11.0.0", False) == ("TF32",)
    assert precision_flags("10.13.0", True) == ("TF32", "FP16")
    trt, seen = _fake_trt()  # TensorRT 11: BuilderFlag has TF32, no FP16
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "device", _CudaDevice)
    assert build_engine(_plan(tmp_path, fp16=True)).read_bytes() == b"engine"
    assert seen["flags"] == ["TF32"]
    # a plan naming a flag this TensorRT lacks is one typed error, not an AttributeError
    with pytest.raises(ExportError, match="no BuilderFlag FP16"):
        build_engine(_plan(tmp_path, fp16=True, version="10.13.0"))


def test_gpu_review_A2_engine_built_with_the_stage_gpu_current(tmp_path, monkeypatch):
    from kbridge.export.tensorrt import build_engine

    trt, seen = _fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "device", _CudaDevice)
    build_engine(_plan(tmp_path, fp16=False, device="cuda:2"))
    assert seen["builder_device"] == 2 and seen["build_device"] == 2 and _CudaDevice.current == [0]


def test_gpu_review_A5_profile_max_follows_the_profile_batch():
    from kbridge.export.parts import max_batch

    for profile, rows in (("h100", 7), ("4090x4", 2), ("edge", 2)):
        cfg = build_config(profile)
        assert max_batch(cfg, cfg.generation.batch_size) == rows, profile  # UNet profile max: 2 × rows
    tiny = build_config("tiny")
    assert max_batch(tiny, tiny.generation.batch_size) == 32
    # a larger batch than the profile's max still fits: the max follows it
    assert max_batch(build_config("h100", overrides={"generation": {"batch_size": 12}}), 12) == 12


# ------------------------------------------------------------------ B: ONNX export and fp16


def test_gpu_review_B1_export_examples_follow_the_module_device_and_dtype():
    from kbridge.export.onnx import trace_inputs
    from kbridge.export.specs import Axis, ExportSpec, TensorSpec

    spec = ExportSpec("m", (TensorSpec("x", ("batch", 4)), TensorSpec("ids", ("batch", 3), "int64", 9)),
                      (TensorSpec("y", ("batch", 4)),), (Axis("batch", 1, 2, 8, 2),))
    gpu_like = torch.nn.Linear(4, 4, device="meta", dtype=torch.float16)  # a "CUDA fp16" pipeline module
    m, ex = trace_inputs(spec, gpu_like, fp16=True)
    assert m is gpu_like  # already the graph's dtype: no second copy of the weights
    assert ex["x"].device.type == "meta" and ex["x"].dtype == torch.float16
    assert ex["ids"].device.type == "meta" and ex["ids"].dtype == torch.int64
    m, ex = trace_inputs(spec, gpu_like, fp16=False)  # an fp32 graph of an fp16 module: a cast copy
    assert m is not gpu_like and next(m.parameters()).dtype == torch.float32 and gpu_like.weight.dtype == torch.float16
    assert ex["x"].dtype == torch.float32 and ex["x"].device.type == "meta"


def test_gpu_review_B2_sdxl_vae_graphs_stay_float32(tmp_path):
    from kbridge.engine import zoo
    from kbridge.export.cache import onnx_key
    from kbridge.export.parts import runtime_for, sdxl_parts

    cfg = build_config("tiny", overrides={"runtime": {"fp16": True}})
    from diffusers import StableDiffusionXLPipeline

    d = zoo.resolve("sdxl_base", cfg)
    pipe = StableDiffusionXLPipeline.from_pretrained(d)
    parts = sdxl_parts(pipe, d, "sdxl_base", cfg)
    assert pipe.vae.config.force_upcast  # the stock SDXL VAE
    for name, ex in parts.items():
        fp16 = runtime_for(ex, cfg.runtime).fp16
        assert fp16 == ("vae" not in name), name
        assert onnx_key(ex, runtime_for(ex, cfg.runtime), tmp_path)["dtype"] == ("float16" if fp16 else "float32")
    # an fp16-fix VAE (force_upcast false) may run fp16 graphs
    pipe.vae.register_to_config(force_upcast=False)
    assert runtime_for(sdxl_parts(pipe, d, "sdxl_base", cfg)["sdxl_base.vae_decoder"], cfg.runtime).fp16


def test_gpu_review_B3_gpu_profiles_build_fp16_graphs():
    for profile in ("h100", "4090x4", "edge"):
        assert build_config(profile).runtime.fp16, profile
    assert not build_config("tiny").runtime.fp16


# ------------------------------------------------------------------ C: torch-tensorrt


def _spec(opt_batch):
    from kbridge.export.specs import Axis, ExportSpec, TensorSpec

    return ExportSpec("m", (TensorSpec("x", ("batch", 4, 8, 8)), TensorSpec("ids", ("batch", 77), "int64", 9)),
                      (TensorSpec("y", ("batch", 4, 8, 8)),), (Axis("batch", 1, opt_batch, 2, 2),))


def test_gpu_review_C1_C3_C4_compile_settings_bind_device_and_cache(tmp_path):
    from kbridge.engine.runtime.torch_trt import compile_settings

    s = compile_settings(_spec(1), "cuda:2", True, tmp_path)
    assert s["device"] == torch.device("cuda", 2)
    assert "enabled_precisions" not in s  # ignored on the dynamo path: precision is the module's dtype
    assert s["cache_built_engines"] and s["reuse_cached_engines"]
    # torch-TensorRT 2.13 caches an engine only when it is refittable (immutable_weights=False):
    # dynamo/conversion/_conversion.py, default IMMUTABLE_WEIGHTS = True in dynamo/_defaults.py
    assert s["immutable_weights"] is False
    assert s["engine_cache_dir"] == str(tmp_path / "engines") and s["timing_cache_path"] == str(tmp_path / "timing.cache")


def test_gpu_review_C2_trace_at_opt_two_not_one():
    from kbridge.engine.runtime.torch_trt import trace_shapes

    shapes = trace_shapes(_spec(1))  # edge: opt batch 1 would make torch.export specialise the batch
    assert shapes["x"] == ((1, 4, 8, 8), (2, 4, 8, 8), (2, 4, 8, 8))
    assert shapes["ids"] == ((1, 77), (2, 77), (2, 77))  # static dims untouched


def test_gpu_review_C4_runner_compiles_a_copy_on_the_stage_gpu(monkeypatch, tmp_path):
    """With torch-tensorrt faked at its boundary: the pipeline's own module is not cast or moved."""
    from kbridge.engine.runtime import torch_trt

    seen = {}
    fake = types.SimpleNamespace(Input=lambda **kw: kw)

    def compile(module, inputs, **kw):
        seen.update(kw, module=module, current=_CudaDevice.current[0], inputs=inputs)
        return lambda *a: (a[0],)

    fake.compile = compile
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", _CudaDevice)
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append((self, a)) or self)
    own = torch.nn.Linear(4, 4)
    torch_trt.torch_tensorrt_runner(_spec(1), own, "cuda:2", True, tmp_path)
    assert seen["module"] is not own and all(m is not own for m, _ in moved)
    assert seen["current"] == 2 and seen["device"] == torch.device("cuda", 2)
    assert seen["inputs"][0]["opt_shape"] == (2, 4, 8, 8) and seen["inputs"][1]["dtype"] == torch.int64


# ------------------------------------------------------------------ D: onnxruntime-gpu


def test_gpu_review_D1_D2_trt_ep_profiles_and_cuda_arena(tmp_path):
    from kbridge.engine.runtime.ort import _providers

    trt, cuda, cpu = _providers("tensorrt", 2, True, tmp_path, _spec(2))
    assert trt[1]["device_id"] == 2 and cuda[1]["device_id"] == 2 and cpu == "CPUExecutionProvider"
    assert trt[1]["trt_profile_min_shapes"] == "x:1x4x8x8,ids:1x77"
    assert trt[1]["trt_profile_opt_shapes"] == "x:2x4x8x8,ids:2x77"
    assert trt[1]["trt_profile_max_shapes"] == "x:2x4x8x8,ids:2x77"
    assert cuda[1]["arena_extend_strategy"] == "kSameAsRequested"


# ------------------------------------------------------------------ runtime options


def test_gpu_review_I1_compile_mode_reaches_torch_compile(monkeypatch):
    from kbridge.engine.runtime.torch_runner import torch_runner

    modes = []
    monkeypatch.setattr(torch, "compile", lambda m, mode=None: modes.append(mode) or m)
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    spec = _spec(2)

    class Ident(torch.nn.Module):
        def forward(self, x, *_):
            return (x,)

    lin = Ident()
    run = torch_runner(replace(spec, inputs=spec.inputs[:1]), lin, compile=True, mode="reduce-overhead")
    x = torch.ones(2, 4, 8, 8)
    y = run({"x": x})["y"]
    assert modes == ["reduce-overhead"] and marks == [1]
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()  # cloned: the graph's buffer is reused
    torch_runner(spec, lin, compile=True)
    assert modes[-1] is None
    with pytest.raises(Exception, match="unknown runtime.compile_mode 'fast'"):
        build_config("tiny", overrides={"runtime": {"compile_mode": "fast"}})


# ------------------------------------------------------------------ A6: swapped runners free torch weights


def test_gpu_review_A6_swapped_modules_release_their_weights_and_still_render(cfg):
    import copy

    import numpy as np

    from kbridge.engine import zoo
    from kbridge.engine.generate.sdxl import SDXLGenerator
    from kbridge.engine.runtime.swap import swap_sdxl
    from kbridge.engine.runtime.torch_runner import torch_runner

    base, refiner = zoo.resolve("sdxl_base", cfg), zoo.resolve("sdxl_refiner", cfg)
    g = replace(cfg.generation, batch_size=2)
    ref = SDXLGenerator(base, refiner, g).render(["a red cup"], [5])[0]
    # a runner that holds its own copy, as an ONNX / TensorRT runner holds a graph file / an engine
    devices = []
    make = lambda ex, c, dev: devices.append(dev) or torch_runner(ex.spec, copy.deepcopy(ex.module))  # noqa: E731
    # the config names another device than the one this worker's pipeline was loaded on
    other = replace(cfg, generation=replace(g, device="cuda:3"))
    swapped = SDXLGenerator(base, refiner, g, swap=lambda b, r: swap_sdxl(b, r, base, refiner, other, make, True))
    for pipe, name in ((swapped.base, "unet"), (swapped.base, "text_encoder"), (swapped.base, "text_encoder_2"),
                       (swapped.refiner, "unet")):
        m = getattr(pipe, name)
        assert m.released and all(p.device.type == "meta" for p in m.inner.parameters()), name
        assert m.device.type == "cpu" and m.dtype == torch.float32  # what the pipeline reads
    assert all(p.device.type == "cpu" for p in swapped.base.vae.inner.parameters())  # img2img encode stays
    assert devices == ["cpu"] * 5  # every runner where its pipeline lives, not on the config's cuda:3
    got = swapped.render(["a red cup"], [5])[0]
    assert np.abs(np.asarray(got, np.int16) - np.asarray(ref, np.int16)).max() <= 2
    assert swapped.counters.unet_evals > 0


# ------------------------------------------------------------------ E: vLLM


def test_gpu_review_E1_gptq_left_to_vllm_autodetect(cfg, tmp_path):
    from kbridge.engine.lmm.serving import SERVE_PROFILES, serve_command
    from kbridge.engine.lmm.vllm_local import llm_kwargs

    for name in ("edge", "4090x4-72b"):
        argv, _ = serve_command(SERVE_PROFILES[name], "/m")
        assert "--quantization" not in argv and argv[argv.index("--dtype") + 1] == "auto"
        assert "quantization" not in llm_kwargs(tmp_path, cfg.lmm, name)


def test_gpu_review_E2_tp_split_needs_whole_quantisation_groups(tmp_path):
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


def _fake_vllm(monkeypatch, expect: int):
    """vLLM at its boundary: AsyncLLM.generate answers only once ``expect`` requests are in flight."""
    import importlib.machinery

    seen = {"prompts": [], "params": [], "args": None}
    mods = {n: types.ModuleType(n) for n in ("vllm", "vllm.engine", "vllm.engine.arg_utils", "vllm.v1",
                                              "vllm.v1.engine", "vllm.v1.engine.async_llm", "vllm.sampling_params",
                                              "vllm.platforms", "vllm.config")}
    mods["vllm"].__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mods["vllm"].SamplingParams = lambda **kw: kw
    mods["vllm.sampling_params"].StructuredOutputsParams = lambda **kw: kw
    mods["vllm.engine.arg_utils"].AsyncEngineArgs = lambda **kw: kw
    mods["vllm.platforms"].current_platform = types.SimpleNamespace(is_cuda=lambda: True, is_cpu=lambda: False)
    mods["vllm.config"].StructuredOutputsConfig = lambda **kw: kw

    class AsyncLLM:
        def __init__(self):
            self.all_in = asyncio.Event()
            self.loop = asyncio.get_running_loop()  # created on the backend's own loop

        @classmethod
        def from_engine_args(cls, args):
            seen["args"] = args
            return cls()

        async def generate(self, prompt, params, request_id):
            assert asyncio.get_running_loop() is self.loop
            seen["prompts"].append(prompt)
            seen["params"].append(params)
            if len(seen["prompts"]) >= expect:
                self.all_in.set()
            await asyncio.wait_for(self.all_in.wait(), 10)
            for n in (1, 2):  # cumulative outputs, the last one complete
                out = types.SimpleNamespace(text=f"{params['seed']}:{n}", token_ids=[0] * n)
                yield types.SimpleNamespace(outputs=[out], prompt_token_ids=[0] * 7)

    mods["vllm.v1.engine.async_llm"].AsyncLLM = AsyncLLM
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return seen


def test_gpu_review_E3_E4_async_engine_batches_across_callers_with_pil_images(cfg, monkeypatch):
    from PIL import Image

    from kbridge.engine import zoo
    from kbridge.engine.lmm import Request
    from kbridge.engine.lmm.vllm_local import VLLMBackend

    seen = _fake_vllm(monkeypatch, expect=4)
    be = VLLMBackend(zoo.resolve("lmm", cfg), cfg.lmm, "h100")
    img = Image.new("RGB", (32, 32), (200, 10, 10))
    msg = [{"role": "user", "content": [{"type": "text", "text": "what is here?"}, {"type": "image", "image": img}]}]
    reqs = [Request(msg, {"type": "object"} if i % 2 else None, 100 + i, 8, 0.3, f"s{i}", "t", 1) for i in range(4)]

    async def two_callers():  # two pipeline batches in flight: a lock would deadlock the fake
        return await asyncio.gather(be.generate(reqs[:2]), be.generate(reqs[2:]))

    a, b = asyncio.run(two_callers())
    assert [g.text for g in a + b] == ["100:2", "101:2", "102:2", "103:2"]
    assert a[0].prompt_tokens == 7 and a[0].generated_tokens == 2
    p = seen["prompts"][0]
    assert p["multi_modal_data"]["image"][0] is img  # the PIL image itself: no PNG / base64 round trip
    assert "<|image_pad|>" in p["prompt"] and "what is here?" in p["prompt"]
    by_seed = {q["seed"]: q for q in seen["params"]}
    assert by_seed[101]["structured_outputs"] == {"json": {"type": "object"}} and by_seed[100]["structured_outputs"] is None
    assert seen["args"]["tensor_parallel_size"] == 1 and seen["args"]["generation_config"] == "vllm"
    be.close()


def test_gpu_review_E5_E6_http_uploads_and_sampling(cfg):
    from kbridge.engine.lmm import Request
    from kbridge.engine.lmm.serving import SERVE_PROFILES
    from kbridge.engine.lmm.vllm_http import HTTPBackend

    for profile in ("h100", "4090x4", "edge"):
        assert build_config(profile).lmm.http_max_pixels == SERVE_PROFILES[profile].max_pixels, profile
    be = HTTPBackend(replace(cfg.lmm, backend="http", url="http://127.0.0.1:9/v1"), check=False)
    body = be.body(Request([{"role": "user", "content": [{"type": "text", "text": "x"}]}], None, 1, 8, 0.3,
                           "s", "t", 1))
    assert body["top_k"] == -1 and body["repetition_penalty"] == 1.0 and body["top_p"] == 1.0


# ------------------------------------------------------------------ G: faiss-gpu


def _fake_faiss(monkeypatch, gpus=4):
    import numpy as np

    seen = {"clones": [], "temp": []}

    class Res:
        def setTempMemory(self, n):
            seen["temp"].append(n)

    class Flat:
        def __init__(self, d):
            self.d, self.ntotal = d, 0

        def add(self, x):
            self.ntotal += len(x)

    class IVFPQ(Flat):
        def __init__(self, q, d, lists, m, bits, metric):
            super().__init__(d)
            self.pq = types.SimpleNamespace(M=m)

        def train(self, x):
            pass

    def to_gpu(res, dev, index, opts):
        seen["clones"].append((res, dev, opts.useFloat16))
        return index

    fake = types.SimpleNamespace(IndexFlatIP=Flat, IndexIVFPQ=IVFPQ, METRIC_INNER_PRODUCT=0,
                                 StandardGpuResources=Res, get_num_gpus=lambda: gpus, index_cpu_to_gpu=to_gpu,
                                 GpuClonerOptions=lambda: types.SimpleNamespace(useFloat16=False),
                                 downcast_index=lambda i: i)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    from kbridge.engine.retrieve import index

    monkeypatch.setattr(index, "_RESOURCES", {})
    return seen, np.random.default_rng(0).standard_normal((50, 16)).astype("float32")


def test_gpu_review_G1_faiss_searches_on_cpu_unless_asked_then_on_the_stage_gpu(monkeypatch):
    from kbridge.engine.retrieve.index import GPU_TEMP_BYTES, EmbeddingIndex, IndexUnavailable

    seen, x = _fake_faiss(monkeypatch)
    EmbeddingIndex.build(x, "flat")  # default: the CPU, even with GPUs visible
    assert seen["clones"] == []
    EmbeddingIndex.build(x, "flat", use_gpu=True, device="cuda:2")
    EmbeddingIndex.build(x, "flat", use_gpu=True, device="cuda:2")
    (r1, d1, _), (r2, d2, _) = seen["clones"]
    assert d1 == d2 == 2 and r1 is r2 and seen["temp"] == [GPU_TEMP_BYTES]  # one shared, small resource
    with pytest.raises(IndexUnavailable, match="cuda:7"):
        EmbeddingIndex.build(x, "flat", use_gpu=True, device="cuda:7")


# G2: tests/test_gpu_round2.py (real faiss-cpu indexes against faiss-gpu's rule)


# ------------------------------------------------------------------ I: SDXL GPU options


def test_gpu_review_I1_sdxl_memory_and_speed_options(cfg):
    import numpy as np

    from kbridge.engine import zoo
    from kbridge.engine.generate.sdxl import SDXLGenerator

    base, refiner = zoo.resolve("sdxl_base", cfg), zoo.resolve("sdxl_refiner", cfg)
    g = replace(cfg.generation, vae_slicing=True, channels_last=True, fuse_qkv=True, vae=str(base / "vae"))
    gen = SDXLGenerator(base, refiner, g)
    assert gen.options == ["fuse_qkv", "channels_last", "vae_slicing"]
    assert gen.base.vae.use_slicing and gen.refiner.vae is gen.base.vae
    assert any(getattr(m, "fused_projections", False) for m in gen.base.unet.modules())
    conv = gen.base.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    ref = SDXLGenerator(base, refiner, cfg.generation).render(["a red cup", "a dog"], [5, 6])
    got = gen.render(["a red cup", "a dog"], [5, 6])
    for a, b in zip(ref, got):  # the same images within float noise (fused matmuls, another layout)
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 3


# ------------------------------------------------------------------ full-size twins, bench gpu, MaxSim


def test_full_size_twins_match_published_parameter_counts():
    from kbridge.engine import fullsize as F

    counts = F.param_counts(F.FULL_SIZE, "meta")
    for name, (published, tol, source) in F.PUBLISHED.items():
        assert abs(counts[name] - published) <= tol * published, (name, counts[name], source)
    assert counts["sdxl.vae"] == 83_653_863  # the SDXL VAE's published count
    # Cheff has no published total: its text embedder is checked against x-transformers' closed form
    # for its published config (1280 wide, 32 layers, 8 heads × 64, ffn 4×, vocab 30522, 77 positions)
    d, inner, ffn, v = 1280, 512, 5120, 30522
    layer = 3 * inner * d + (inner * d + d) + 2 * d + (ffn * d + ffn) + (d * ffn + d) + 2 * d
    bert = v * d + 77 * d + 32 * layer + 2 * d + (v * d + v)
    cheff = F.build("cheff", "meta").module
    assert sum(p.numel() for p in cheff["bert"].parameters()) == bert
    assert counts["cheff"] == sum(p.numel() for p in cheff.parameters())


def test_full_size_and_bench_gpu_refuse_without_a_gpu_in_one_line(monkeypatch):
    from typer.testing import CliRunner

    from kbridge.cli.app import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["models", "build", "--full-size"], ["bench", "gpu", "--quick", "--no-save"]):
        r = CliRunner().invoke(app, argv)
        assert r.exit_code == 2, (argv, r.output)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "CUDA GPU" in lines[0], r.output


def test_gpu_review_H3_padded_torch_maxsim_matches_the_reference():
    import numpy as np

    from kbridge.kernels.maxsim import maxsim_reference
    from kbridge.kernels.maxsim_torch import maxsim_pairs_torch

    rng = np.random.default_rng(0)
    q, q_off = rng.standard_normal((20, 8)).astype(np.float32), np.array([0, 3, 3, 10, 20])
    x, x_off = rng.standard_normal((15, 8)).astype(np.float32), np.array([0, 5, 5, 15])
    pairs = np.array([[i, j] for i in range(4) for j in range(3)])  # empty sets on both sides included
    for sym in (False, True):
        np.testing.assert_allclose(maxsim_pairs_torch(q, q_off, x, x_off, pairs, sym),
                                   maxsim_reference(q, q_off, x, x_off, pairs, sym), atol=1e-5)


# ------------------------------------------------------------------ A3 / A4 / A7: the TensorRT runner


def test_gpu_review_A3_A4_A7_trt_runner_contexts_graphs_and_device(monkeypatch, tmp_path):
    """TensorRT and torch.cuda faked at their boundary (CUDA buffers become CPU tensors)."""
    from kbridge.engine.runtime import trt as T
    from kbridge.export.specs import Axis, ExportSpec, TensorSpec

    seen = {"deserialize_device": None, "modes": [], "replays": 0, "strategies": []}

    class Ctx:
        def __init__(self):
            self.shapes, self.mem = {}, None

        def set_device_memory(self, ptr, size):
            self.mem = (ptr, size)

        def set_input_shape(self, name, shape):
            self.shapes[name] = shape
            return shape[0] <= 6  # the engine's profile max

        def set_tensor_address(self, name, ptr):
            pass

        def execute_async_v3(self, stream):
            return True

    class Engine:
        device_memory_size_v2 = 4096

        def __init__(self):
            self.contexts = []

        def create_execution_context(self, strategy):
            seen["strategies"].append(strategy)
            self.contexts.append(Ctx())
            return self.contexts[-1]

    engine = Engine()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            seen["deserialize_device"] = _CudaDevice.current[0]
            return engine

    fake_trt = types.SimpleNamespace(Runtime=Runtime, Logger=lambda level=0: None,
                                     ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED="UM"))
    fake_trt.Logger.WARNING = 1
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)

    class Stream:
        cuda_stream = 0

        def __init__(self, *a):
            pass

        def synchronize(self):
            pass

        def wait_stream(self, other):
            pass

    class Graph:
        def replay(self):
            seen["replays"] += 1

    @contextlib.contextmanager
    def graph(g, stream=None, capture_error_mode="global"):
        seen["modes"].append(capture_error_mode)
        yield

    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, device=None, **k: real_empty(
        *a, device="cpu" if device is not None and torch.device(device).type == "cuda" else device, **k))
    for name, value in (("is_available", lambda: True), ("device", _CudaDevice), ("Stream", Stream),
                        ("stream", lambda s: contextlib.nullcontext()), ("current_stream", lambda d=None: Stream()),
                        ("CUDAGraph", Graph), ("graph", graph)):
        monkeypatch.setattr(torch.cuda, name, value)
    (tmp_path / "m.plan").write_bytes(b"plan")
    spec = ExportSpec("m", (TensorSpec("x", ("batch", 4)),), (TensorSpec("y", ("batch", 4)),),
                      (Axis("batch", 1, 2, 8, 2),))
    run = T.TrtRunner(tmp_path / "m.plan", spec, "cuda:2", max_graphs=2)
    assert seen["deserialize_device"] == 2 and seen["strategies"] == ["UM"]  # A2: bound to the stage's GPU
    for b in (1, 2, 3, 1):
        assert run({"x": torch.ones(b, 4)})["y"].shape == (b, 4)
    # A3: one context per captured shape (plus the ungraphed one), all on one shared activation buffer
    assert len(engine.contexts) == 3 and len({c.mem for c in engine.contexts}) == 1
    assert engine.contexts[1].shapes == {"x": (1, 4)} and engine.contexts[2].shapes == {"x": (2, 4)}
    assert engine.contexts[0].shapes == {"x": (3, 4)}  # A7: the third shape runs ungraphed
    assert seen["modes"] == ["thread_local", "thread_local"]  # A4
    assert seen["replays"] == 3  # shapes 1, 2 and 1 again replay their graphs
    with pytest.raises(T.TrtExecutionError, match="rejected shape"):  # A3: a refused shape is an error
        run({"x": torch.ones(7, 4)})


def test_gpu_scripts_are_executable_bash():
    import os
    import subprocess

    root = Path(__file__).resolve().parent.parent
    for name in ("gpu_check.sh", "gpu_wheels.sh"):
        path = root / "scripts" / name
        assert os.access(path, os.X_OK), name
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0, name
    r = subprocess.run([str(root / "scripts" / "gpu_wheels.sh"), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage: scripts/gpu_wheels.sh [DIR]" in r.stderr
    r = subprocess.run([str(root / "scripts" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument --bogus" in r.stderr


def test_bench_gpu_sections_on_tiny_twins_on_cpu(engine):
    """`bench gpu`'s sections on the tiny twins (CPU timing): the UNet's FLOPs double with the
    batch, decode per token is measured step by step (positive, never a clamped difference), a
    section that raises costs one error row and the next section still runs, and a section that
    does not fit the budget is skipped with a row saying so."""
    from kbridge.benchmarks import gpu as G

    s = G.Setup("cpu", quick=True, dry=True)
    rows = []
    boom = G.Section("boom", 0, lambda s: iter([1 / 0]))
    G.stream(s, rows.append, 600, only=[G.Section("unet", 0, G.unet_section), boom,
                                        G.Section("lmm", 0, G.lmm_section), G.Section("big", 1e6, G.clip_section)])
    ok = [r for r in rows if r["status"] == "ok"]
    unet = [r for r in ok if r["section"] == "unet"]
    work = [r["tflops"] * r["ms_p50"] for r in unet]  # FLOPs, up to a constant
    assert [r["batch"] for r in unet] == [1, 2] and work[1] / work[0] == pytest.approx(2.0, rel=0.01)
    err = [r for r in rows if r["section"] == "boom" and r["status"] == "error"]
    assert len(err) == 1 and err[0]["error"].startswith("ZeroDivisionError")
    decode = [r for r in ok if "decode" in r["name"]]
    assert len(decode) == 2 and all(r["ms_p50"] > 0.01 and r["gbps"] > 0 for r in decode)  # ms: no 1e-9 clamp
    assert [r["status"] for r in rows if r["section"] == "big"] == ["skipped"]

