"""The native TensorRT runner on the CPU, TensorRT and torch.cuda faked at their boundary (CUDA
buffers become CPU tensors): execution contexts per captured shape, CUDA graphs, the stage's
device, and one scratch buffer per pipeline."""
import contextlib
import sys
import types

import pytest
import torch

from tests.helpers.cuda_fakes import CudaDevice


def test_trt_runner_contexts_graphs_and_device(monkeypatch, tmp_path):
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
            seen["deserialize_device"] = CudaDevice.current[0]
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
    for name, value in (("is_available", lambda: True), ("device", CudaDevice), ("Stream", Stream),
                        ("stream", lambda s: contextlib.nullcontext()), ("current_stream", lambda d=None: Stream()),
                        ("CUDAGraph", Graph), ("graph", graph)):
        monkeypatch.setattr(torch.cuda, name, value)
    (tmp_path / "m.plan").write_bytes(b"plan")
    spec = ExportSpec("m", (TensorSpec("x", ("batch", 4)),), (TensorSpec("y", ("batch", 4)),),
                      (Axis("batch", 1, 2, 8, 2),))
    run = T.TrtRunner(tmp_path / "m.plan", spec, "cuda:2", max_graphs=2)
    assert seen["deserialize_device"] == 2 and seen["strategies"] == ["UM"]  # bound to the stage's GPU
    for b in (1, 2, 3, 1):
        assert run({"x": torch.ones(b, 4)})["y"].shape == (b, 4)
    # one context per captured shape (plus the ungraphed one), all on one shared activation buffer
    assert len(engine.contexts) == 3 and len({c.mem for c in engine.contexts}) == 1
    assert engine.contexts[1].shapes == {"x": (1, 4)} and engine.contexts[2].shapes == {"x": (2, 4)}
    assert engine.contexts[0].shapes == {"x": (3, 4)}  # the third shape runs ungraphed (max_graphs=2)
    assert seen["modes"] == ["thread_local", "thread_local"]  # other threads' CUDA calls do not break a capture
    assert seen["replays"] == 3  # shapes 1, 2 and 1 again replay their graphs
    with pytest.raises(T.TrtExecutionError, match="rejected shape"):  # a shape the engine refuses is an error
        run({"x": torch.ones(7, 4)})


def test_trt_engines_of_one_pipeline_share_one_scratch_sized_for_the_largest(monkeypatch):
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
