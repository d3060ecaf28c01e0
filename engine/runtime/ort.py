"""onnxruntime runner: CPU, CUDA or TensorRT execution provider; I/O binding on GPU so tensors
stay on the device (outputs are preallocated from the spec's symbolic shapes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kbridge.engine.errors import RuntimeUnavailable
from kbridge.export.specs import ExportSpec


_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def trt_profile_options(spec: ExportSpec) -> dict[str, str]:
    """The spec's min / opt / max shapes as the TensorRT EP's explicit profile strings
    (``"sample:1x4x128x128,timestep:1"``): without them the EP builds an engine for the first shape
    it sees and rebuilds for every later shape outside it (a last partial batch, a new CLIP length)."""
    prof = spec.profile()
    fmt = lambda i: ",".join(f"{n}:{'x'.join(map(str, shapes[i]))}" for n, shapes in prof.items())  # noqa: E731
    return {"trt_profile_min_shapes": fmt(0), "trt_profile_opt_shapes": fmt(1), "trt_profile_max_shapes": fmt(2)}


def _providers(kind: str, device_id: int, fp16: bool, cache: Path, spec: ExportSpec | None = None) -> list:
    # kSameAsRequested: the arena grows by what is asked, not to the next power of two, beside
    # torch's caching allocator on the same GPU
    cuda = ("CUDAExecutionProvider", {"device_id": device_id, "arena_extend_strategy": "kSameAsRequested"})
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        return [cuda, "CPUExecutionProvider"]
    trt = ("TensorrtExecutionProvider", {"device_id": device_id, "trt_fp16_enable": fp16,
                                         "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                                         "trt_timing_cache_enable": True,
                                         **(trt_profile_options(spec) if spec is not None else {})})
    return [trt, cuda, "CPUExecutionProvider"]


class OrtRunner:
    def __init__(self, path: Path, spec: ExportSpec, provider: str = "cpu", device: str = "cpu",
                 threads: int = 0, fp16: bool = False):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeUnavailable("onnxruntime is not installed (pip install 'kbridge[cpu]' or "
                                     "'kbridge[gpu]')") from e
        self.spec, self.provider = spec, provider
        self.device = torch.device(device if provider != "cpu" else "cpu")
        self.float_dtype = torch.float16 if fp16 else torch.float32
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        # no busy-waiting between runs: a pipeline interleaves torch work (scheduler, guidance) and
        # several sessions, and spinning ORT threads would steal those cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        dev_id = self.device.index or 0
        self.session = ort.InferenceSession(str(path), so, providers=_providers(
            provider, dev_id, fp16, Path(path).parent / "ort-trt-cache", spec))
        # onnxruntime-gpu silently falls back to CPU: trust the session, not get_available_providers()
        got = self.session.get_providers()
        if _PROVIDER[provider] not in got:
            raise RuntimeUnavailable(f"{spec.name}: onnxruntime did not enable {_PROVIDER[provider]} "
                                     f"(session providers: {', '.join(got)})")
        self.outputs = spec.output_names()

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.provider == "cpu":
            feeds = {t.name: self._cast(inputs[t.name], t.dtype).detach().cpu().numpy() for t in self.spec.inputs}
            return {n: torch.from_numpy(y) for n, y in zip(self.outputs, self.session.run(self.outputs, feeds))}
        return self._run_bound(inputs)

    def _cast(self, x: torch.Tensor, dtype: str) -> torch.Tensor:
        return x.to(torch.int64) if dtype == "int64" else x.to(self.float_dtype)

    def _run_bound(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dims = self.spec.dims_of(inputs)
        binding = self.session.io_binding()
        idx = self.device.index or 0
        keep = []  # inputs must outlive the run
        for t in self.spec.inputs:
            x = self._cast(inputs[t.name], t.dtype).to(self.device).contiguous()
            keep.append(x)
            binding.bind_input(t.name, "cuda", idx, _np(x.dtype), tuple(x.shape), x.data_ptr())
        outs = {}
        for t in self.spec.outputs:
            y = torch.empty(self.spec.shape(t, dims), dtype=self.float_dtype, device=self.device)
            binding.bind_output(t.name, "cuda", idx, _np(y.dtype), tuple(y.shape), y.data_ptr())
            outs[t.name] = y
        torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch's stream
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outs


def _np(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[dtype]
