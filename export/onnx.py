"""ONNX export with torch.onnx's dynamo exporter, a checker pass, optional fp16 conversion."""
from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch

from kbridge.export.specs import ExportSpec
from kbridge.engine.errors import KbridgeError

log = logging.getLogger(__name__)


class ExportError(KbridgeError, RuntimeError):
    """Exporting, checking or converting a graph failed."""


def export_onnx(spec: ExportSpec, module: torch.nn.Module, path: Path, opset: int = 18, fp16: bool = False,
                optimize: bool = True) -> Path:
    """Write ``path`` (+ ``path.data``, the external weights, kept beside it) for ``module``, whose
    forward takes the spec's inputs positionally and returns a tuple in the spec's output order.
    ``optimize=False`` skips the exporter's graph optimiser (faster export, same numbers)."""
    spec.validate()
    module, example = trace_inputs(spec, module, fp16)
    args = tuple(example[n] for n in spec.input_names())
    # Dim.DYNAMIC, not Dim(min, max): explicit ranges make torch.export reject guards it derives
    # itself (e.g. "2 <= batch <= 63") and the exporter then retries, doubling a ~10-25 s export.
    # The graph's axes stay symbolic; the spec's ranges are enforced by the TensorRT profiles.
    dynamic = {t.name: {i: torch.export.Dim.DYNAMIC for i, d in enumerate(t.shape) if isinstance(d, str)} or None
               for t in spec.inputs}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(module, args, input_names=spec.input_names(), output_names=spec.output_names(),
                                     opset_version=opset, dynamo=True, dynamic_shapes=dynamic, verbose=False,
                                     optimize=optimize)
            prog.save(str(path), external_data=True)
    except Exception as e:  # the exporter raises many types; one typed error for callers
        raise ExportError(f"{spec.name}: ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    check(path)
    log.debug("exported %s → %s", spec.name, path)
    return path


def trace_inputs(spec: ExportSpec, module: torch.nn.Module, fp16: bool) -> tuple[torch.nn.Module, dict]:
    """The module to trace and its example inputs, on the module's own device and in the graph's
    dtype (float16 when ``fp16``): an inline export on a GPU traces the pipeline's CUDA module, so
    the examples go there too. The module is copied only when its dtype is not the graph's (e.g.
    an fp32 graph of a float16 pipeline, or the fp32 VAE of an fp16 profile); a module already in
    the graph's dtype is traced as it is, without a second copy of its weights."""
    dtype = torch.float16 if fp16 else torch.float32
    p = next(iter(module.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    if p is not None and p.dtype != dtype:
        # fp16 graphs are traced from a half-precision copy: weights, activations and float I/O
        # all float16, the way TensorRT and the CUDA EP want them
        module = copy.deepcopy(module).to(dtype)
    example = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in spec.sample().items()}
    return module, example


def check(path: Path) -> None:
    """onnx's structural checker over the saved model (path-based, so external data is allowed)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: ONNX checker: {str(e).splitlines()[0][:300]}") from e
