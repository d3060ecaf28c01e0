"""The torch-TensorRT runner on the CPU, torch-tensorrt faked at its boundary: compile settings bound
to the stage's GPU and its engine cache, trace shapes, a compiled copy that leaves the pipeline's
module alone, and the CPU copy it compiles from."""
import sys
import types

import torch

from tests.helpers.cuda_fakes import CudaDevice, example_spec


def test_compile_settings_bind_device_and_cache(tmp_path):
    from kbridge.engine.runtime.torch_trt import compile_settings

    s = compile_settings(example_spec(1), "cuda:2", True, tmp_path)
    assert s["device"] == torch.device("cuda", 2)
    assert "enabled_precisions" not in s  # ignored on the dynamo path: precision is the module's dtype
    assert s["cache_built_engines"] and s["reuse_cached_engines"]
    # torch-TensorRT 2.13 caches an engine only when it is refittable (immutable_weights=False):
    # dynamo/conversion/_conversion.py, default IMMUTABLE_WEIGHTS = True in dynamo/_defaults.py
    assert s["immutable_weights"] is False
    assert s["engine_cache_dir"] == str(tmp_path / "engines") and s["timing_cache_path"] == str(tmp_path / "timing.cache")


def test_trace_at_opt_two_not_one():
    from kbridge.engine.runtime.torch_trt import trace_shapes

    shapes = trace_shapes(example_spec(1))  # edge: opt batch 1 would make torch.export specialise the batch
    assert shapes["x"] == ((1, 4, 8, 8), (2, 4, 8, 8), (2, 4, 8, 8))
    assert shapes["ids"] == ((1, 77), (2, 77), (2, 77))  # static dims untouched


def test_runner_compiles_a_copy_on_the_stage_gpu(monkeypatch, tmp_path):
    """With torch-tensorrt faked at its boundary: the pipeline's own module is not cast or moved."""
    from kbridge.engine.runtime import torch_trt

    seen = {}
    fake = types.SimpleNamespace(Input=lambda **kw: kw)

    def compile(module, inputs, **kw):
        seen.update(kw, module=module, current=CudaDevice.current[0], inputs=inputs)
        return lambda *a: (a[0],)

    fake.compile = compile
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", CudaDevice)
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append((self, a)) or self)
    own = torch.nn.Linear(4, 4)
    torch_trt.torch_tensorrt_runner(example_spec(1), own, "cuda:2", True, tmp_path)
    assert seen["module"] is not own and all(m is not own for m, _ in moved)
    assert seen["current"] == 2 and seen["device"] == torch.device("cuda", 2)
    assert seen["inputs"][0]["opt_shape"] == (2, 4, 8, 8) and seen["inputs"][1]["dtype"] == torch.int64


def test_torch_tensorrt_copies_on_the_cpu_and_releases_the_pipelines_weights(cfg, monkeypatch):
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
