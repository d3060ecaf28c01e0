"""Compiled runtimes on cuda:0: ONNX export from a CUDA-loaded pipeline, onnxruntime-gpu (CUDA EP,
I/O binding), native TensorRT (build, CUDA-graph replay, parity), torch-tensorrt, in-process vLLM.
Each skips on its own when its package is missing."""
from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
import torch

pytestmark = pytest.mark.gpu

TOL = dict(atol=2e-2, rtol=2e-2)  # fp16 graphs against the fp16 torch module


@pytest.fixture(scope="module")
def cuda_parts(gpu_cfg):
    """The pipelines as the engine loads them on a GPU profile (cuda, float16), with fp16 graphs."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPModel

    from kbridge.engine import zoo
    from kbridge.export.parts import clip_parts, sdxl_parts

    cfg = replace(gpu_cfg, runtime=replace(gpu_cfg.runtime, fp16=True))
    d = zoo.resolve("sdxl_base", cfg)
    pipe = StableDiffusionXLPipeline.from_pretrained(d, dtype=torch.float16).to("cuda:0")
    c = zoo.resolve("clip", cfg)
    clip = CLIPModel.from_pretrained(c, dtype=torch.float16).to("cuda:0").eval()
    return cfg, {**sdxl_parts(pipe, d, "sdxl_base", cfg), **clip_parts(clip, c)}


def onnx_cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _inputs(ex, batch, dtype=torch.float16):
    dims = {a.name: a.example for a in ex.spec.axes} | {"batch": batch}
    return {k: v.to("cuda:0", dtype) if v.is_floating_point() else v.cuda() for k, v in ex.spec.sample(dims, 1).items()}


def test_onnx_export_from_cuda_fp16_pipeline(cuda_parts, tmp_path):
    """Export examples follow the CUDA fp16 module; the VAE graph stays float32."""
    import onnx

    from kbridge.export.cache import ensure_onnx

    cfg, parts = cuda_parts
    unet = ensure_onnx(parts["sdxl_base.unet"], tmp_path, cfg.runtime)
    vae = ensure_onnx(parts["sdxl_base.vae_decoder"], tmp_path, cfg.runtime)
    assert unet.key["dtype"] == "float16" and vae.key["dtype"] == "float32"
    m = onnx.load(str(unet.path), load_external_data=False)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_onnxruntime_gpu_cuda_ep_io_binding_parity(cuda_parts, tmp_path):
    if not onnx_cuda_available():
        pytest.skip("needs onnxruntime-gpu with the CUDA execution provider (pip install 'kbridge[gpu]')")
    from kbridge.engine.runtime.ort import OrtRunner
    from kbridge.export.cache import ensure_onnx

    cfg, parts = cuda_parts
    ex = parts["clip.vision"]
    art = ensure_onnx(ex, tmp_path, cfg.runtime)
    run = OrtRunner(art.path, ex.spec, "cuda", "cuda:0", 0, True)
    for b in (1, 3):
        x = _inputs(ex, b)
        got = run(x)["image_embeds"]
        assert got.device == torch.device("cuda", 0)  # I/O binding: stays on the device
        with torch.inference_mode():
            ref = ex.module(*(x[n] for n in ex.spec.input_names()))[0]
        torch.testing.assert_close(got, ref, **TOL)


def test_tensorrt_build_graph_replay_and_parity(cuda_parts, tmp_path):
    """The TensorRT 11 fp16 build, bound to the stage's GPU, one context per graph."""
    pytest.importorskip("tensorrt", reason="needs the tensorrt extra (pip install 'kbridge[tensorrt]')")
    from kbridge.engine.runtime.trt import TrtRunner
    from kbridge.export.cache import ensure_tensorrt

    cfg, parts = cuda_parts
    ex = parts["sdxl_base.unet"]
    art = ensure_tensorrt(ex, tmp_path, cfg.runtime, "cuda:0")
    run = TrtRunner(art.path, ex.spec, "cuda:0", True)
    xs = {b: _inputs(ex, b) for b in (2, 4)}
    with torch.inference_mode():
        refs = {b: ex.module(*(x[n] for n in ex.spec.input_names()))[0] for b, x in xs.items()}
    first = run(xs[2])["noise_pred"]
    run(xs[4])  # a second signature captures its own graph on its own context
    again = run(xs[2])["noise_pred"]  # replaying the first graph after the second was captured
    torch.testing.assert_close(first, refs[2], **TOL)
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    torch.testing.assert_close(run(xs[4])["noise_pred"], refs[4], **TOL)


def test_torch_tensorrt_runner_parity(cuda_parts, tmp_path):
    pytest.importorskip("torch_tensorrt", reason="needs torch-tensorrt (pip install 'kbridge[tensorrt]')")
    from kbridge.engine.runtime.torch_trt import torch_tensorrt_runner

    _, parts = cuda_parts
    ex = parts["clip.vision"]
    run = torch_tensorrt_runner(ex.spec, ex.module, "cuda:0", True, tmp_path)
    x = _inputs(ex, 3)
    with torch.inference_mode():
        ref = ex.module(*(x[n] for n in ex.spec.input_names()))[0]
    torch.testing.assert_close(run(x)["image_embeds"], ref, **TOL)
    assert any((tmp_path / "engines").rglob("*")), "torch-tensorrt's engine cache stayed empty"


def test_in_process_vllm_async_engine_schema_json(gpu_cfg):
    pytest.importorskip("vllm", reason="needs the vllm extra (pip install 'kbridge[vllm]')")
    from kbridge.engine import zoo
    from kbridge.engine.lmm import Request
    from kbridge.engine.domains.general.schemas import knowledge
    from kbridge.engine.lmm.vllm_local import VLLMBackend

    be = VLLMBackend(zoo.resolve("lmm", gpu_cfg), gpu_cfg.lmm, "tiny")
    msg = [{"role": "user", "content": [{"type": "text", "text": "describe a red cup"}]}]
    reqs = [Request(msg, knowledge(gpu_cfg.knowledge), 10 + i, 200, 0.7, f"s{i}", "t", 1) for i in range(4)]

    async def both():
        return await asyncio.gather(be.generate(reqs[:2]), be.generate(reqs[2:]))

    a, b = asyncio.run(both())
    for g in a + b:
        json.loads(g.text)
    be.close()
