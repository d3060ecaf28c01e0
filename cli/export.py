"""``kbridge export``: build the compiled artifacts a profile needs (ONNX graphs, TensorRT engines)
into the artifact cache, printing "built" or "found cached" with each path."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from kbridge.cli.common import ProfileOpt

out = Console(soft_wrap=True)


def export(
    profile: str = ProfileOpt,
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file overriding profile sections."),
    models: Optional[list[str]] = typer.Option(None, "--models", "-m",
                                               help="Parts to export (repeat or comma-separate; default: all)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx | tensorrt (TensorRT needs a CUDA GPU)."),
    fp16: Optional[bool] = typer.Option(None, "--fp16/--fp32", help="Half-precision graphs (GPU)."),
):
    """Export models to ONNX / TensorRT into the artifact cache; prints "built" or "found cached"
    with each path."""
    from kbridge.cli.common import fail, load_config
    from kbridge.engine.errors import RuntimeUnavailable
    from kbridge.export.cache import artifacts_root, ensure_onnx, ensure_tensorrt
    from kbridge.export.onnx import ExportError
    from kbridge.export.parts import PARTS, UnknownPart, load_parts
    from kbridge.export.tensorrt import TensorRTUnavailable

    if fmt not in ("onnx", "tensorrt"):
        fail(f"unknown export format {fmt!r} (known: onnx, tensorrt)")
    names = [n.strip() for m in models or [] for n in m.split(",") if n.strip()] or list(PARTS)
    cfg = load_config(profile, config, runtime=dict(fp16=fp16))
    from kbridge.engine.models import quiet_libraries

    quiet_libraries()
    root = artifacts_root(cfg.cache_dir())
    try:
        parts = load_parts(cfg, names)
        for name, ex in parts.items():
            art = ensure_onnx(ex, root, cfg.runtime) if fmt == "onnx" else \
                ensure_tensorrt(ex, root, cfg.runtime, cfg.generation.device if name.startswith("sdxl")
                                else cfg.rank.device)
            out.print(f"{name}: {'built' if art.built else 'found cached'} {art.path}", highlight=False)
    except (UnknownPart, ExportError, TensorRTUnavailable, RuntimeUnavailable) as e:
        fail(str(e))
