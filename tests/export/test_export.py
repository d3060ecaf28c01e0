"""Export specs, the artifact cache, onnxruntime parity with torch, and the TensorRT build plan.

Tolerance: every exported graph's onnxruntime output matches the torch module on fresh random
inputs at several batch sizes within ATOL + RTOL·|ref| (measured: ≤ 5e-6 in float32).
"""
from __future__ import annotations

import json

import pytest
import torch

from kbridge.export.parts import PARTS

pytest.importorskip("onnxruntime", reason="onnxruntime is in the cpu extra: pip install -e '.[cpu,test]'")

ATOL, RTOL = 1e-4, 1e-4
BATCHES = (1, 3, 5)


def test_every_spec_has_valid_profiles(parts):
    assert set(parts) == set(PARTS)
    for name, ex in parts.items():
        ex.spec.validate()
        prof = ex.spec.profile()
        assert list(prof) == ex.spec.input_names()
        for inp, (mn, opt, mx) in prof.items():
            assert len(mn) == len(opt) == len(mx), (name, inp)
            assert all(1 <= a <= b <= c for a, b, c in zip(mn, opt, mx)), (name, inp, mn, opt, mx)
    unet = parts["sdxl_base.unet"].spec
    # classifier-free guidance doubles the UNet batch: its profile max is twice the VAE's
    assert unet.axis("batch").max == 2 * parts["sdxl_base.vae_decoder"].spec.axis("batch").max
    assert unet.profile()["time_ids"][0] == (1, 6)
    assert parts["sdxl_refiner.unet"].spec.profile()["time_ids"][0] == (1, 5)  # aesthetic-score ids


def test_spec_rejects_bad_axes_and_inputs(parts):
    from dataclasses import replace

    from kbridge.export.specs import Axis, SpecError

    spec = parts["clip.text"].spec
    with pytest.raises(SpecError, match="min <= opt <= max"):
        replace(spec, axes=(Axis("batch", 4, 2, 8, 2), spec.axis("seq"))).validate()
    x = spec.sample({"batch": 2, "seq": 5})
    assert spec.dims_of(x) == {"batch": 2, "seq": 5}
    x["attention_mask"] = x["attention_mask"][:1]
    with pytest.raises(SpecError, match="axis 'batch'"):
        spec.dims_of(x)


def _dims(spec, b):
    return {"batch": b} | ({"seq": 3 + 2 * b} if any(a.name == "seq" for a in spec.axes) else {})


@pytest.mark.parametrize("name", PARTS)
def test_onnxruntime_matches_torch(name, parts, exported, cfg):
    from kbridge.engine.runtime import make_runner

    ex = parts[name]
    ort_run, torch_run = make_runner(ex, cfg, backend="onnx"), make_runner(ex, cfg, backend="torch")
    for b in BATCHES:
        x = ex.spec.sample(_dims(ex.spec, b), seed=1000 + b)  # fresh inputs, not the export example
        got, ref = ort_run(x), torch_run(x)
        assert list(got) == ex.spec.output_names()
        for k in ref:
            assert got[k].shape == ref[k].shape == ex.spec.shape(
                next(t for t in ex.spec.outputs if t.name == k), ex.spec.dims_of(x)), (name, k, b)
            torch.testing.assert_close(got[k], ref[k].float(), atol=ATOL, rtol=RTOL, msg=f"{name}.{k} batch {b}")


def test_cache_finds_built_artifacts_and_keys_cover_settings(parts, exported, cfg):
    from dataclasses import replace

    from kbridge.export.cache import artifacts_root, digest, ensure_onnx, onnx_key

    root = artifacts_root(cfg.cache_dir())
    ex = parts["clip.vision"]
    again = ensure_onnx(ex, root, cfg.runtime)
    assert not again.built and again.path == exported["clip.vision"].path
    d = again.path.parent
    assert d.parent.name == "clip.vision" and d.name == digest(again.key)
    assert (d / "model.onnx.data").exists()  # external weights kept beside the graph
    key = json.loads((d / "key.json").read_text())
    assert key["weights_sha256"] == again.key["weights_sha256"] and key["opset"] == cfg.runtime.opset
    assert set(key["exporter"]) >= {"torch", "onnxscript", "onnx"}
    base = digest(onnx_key(ex, cfg.runtime, root))
    assert digest(onnx_key(ex, replace(cfg.runtime, opset=17), root)) != base
    assert digest(onnx_key(ex, replace(cfg.runtime, fp16=True), root)) != base
    other = replace(ex, spec=replace(ex.spec, axes=(replace(ex.spec.axes[0], max=8),)))
    assert digest(onnx_key(other, cfg.runtime, root)) != base
    # different weights → different key
    text = parts["clip.text"]
    assert onnx_key(text, cfg.runtime, root)["weights_sha256"] == key["weights_sha256"]  # same CLIP files
    assert onnx_key(parts["sdxl_base.unet"], cfg.runtime, root)["weights_sha256"] != key["weights_sha256"]


def test_weights_sha_follows_content(tmp_path):
    from kbridge.export.cache import weights_sha

    f = tmp_path / "w.safetensors"
    f.write_bytes(b"abc")
    a = weights_sha((f,), tmp_path / "root")
    assert a == weights_sha((f,), tmp_path / "root")
    f.write_bytes(b"abd")
    assert weights_sha((f,), tmp_path / "root") != a


def test_fp16_export_has_half_precision_io(parts, tmp_path):
    import onnx

    from kbridge.export.onnx import export_onnx

    ex = parts["clip.vision"]
    path = export_onnx(ex.spec, ex.module, tmp_path / "m.onnx", fp16=True)
    m = onnx.load(str(path), load_external_data=False)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert next(ex.module.parameters()).dtype == torch.float32  # the loaded model is untouched


def test_onnxruntime_refuses_a_silent_cpu_fallback(parts, exported, cfg):
    import onnxruntime as ort

    from kbridge.engine.errors import RuntimeUnavailable
    from kbridge.engine.runtime.ort import OrtRunner

    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        pytest.skip("a CUDA provider is really available here")
    with pytest.raises(RuntimeUnavailable, match="CUDAExecutionProvider"):
        OrtRunner(exported["clip.vision"].path, parts["clip.vision"].spec, provider="cuda", device="cuda:0")


FACTS = {"tensorrt": "10.13.0", "compute_capability": "8.9"}


@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_build_plan_for_every_spec(parts, exported, cfg, fp16, tmp_path):
    from kbridge.export.tensorrt import plan_build

    for name, ex in parts.items():
        plan = plan_build(ex.spec, exported[name].path, tmp_path / name / "model.plan", tmp_path, FACTS, fp16=fp16)
        assert [p[0] for p in plan.profile] == ex.spec.input_names()
        for _, mn, opt, mx in plan.profile:
            assert all(1 <= a <= b <= c for a, b, c in zip(mn, opt, mx))
        assert plan.flags == (("TF32", "FP16") if fp16 else ("TF32",))  # TensorRT 10: weak typing needs FP16
        assert plan.timing_cache == tmp_path / "timing" / "10.13.0-sm89.cache"
        assert plan.onnx_path.exists() and plan.engine_path.name == "model.plan"
    unet = dict((p[0], p[1:]) for p in plan_build(parts["sdxl_base.unet"].spec, exported["sdxl_base.unet"].path,
                                                  tmp_path / "u.plan", tmp_path, FACTS, False).profile)
    lat = cfg.generation.height // 2  # the tiny VAE downsamples by 2
    assert unet["sample"] == ((1, 4, lat, lat), (2 * cfg.generation.batch_size, 4, lat, lat),
                              (2 * max(cfg.runtime.max_batch, cfg.generation.batch_size), 4, lat, lat))


def test_tensorrt_plan_check_rejects_inverted_profiles(tmp_path):
    from kbridge.export.onnx import ExportError
    from kbridge.export.tensorrt import TrtBuildPlan

    plan = TrtBuildPlan(tmp_path / "m.onnx", tmp_path / "m.plan", tmp_path / "t.cache",
                        (("x", (1, 4), (8, 4), (4, 4)),), False)
    with pytest.raises(ExportError, match="min <= opt <= max"):
        plan.check()


def test_tensorrt_engine_build(parts, cfg):
    from kbridge.export.cache import artifacts_root, ensure_tensorrt
    from kbridge.export.tensorrt import TensorRTUnavailable, gpu_facts

    if not torch.cuda.is_available():
        with pytest.raises(TensorRTUnavailable, match="needs a CUDA GPU"):
            gpu_facts()
        pytest.skip("needs a CUDA GPU: TensorRT engines are built for the local GPU architecture")
    pytest.importorskip("tensorrt", reason="needs the tensorrt extra")
    art = ensure_tensorrt(parts["clip.vision"], artifacts_root(cfg.cache_dir()), cfg.runtime)
    assert art.path.exists()
