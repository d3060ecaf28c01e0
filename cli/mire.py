"""``kbridge models convert-mire`` (a published MIRe checkpoint → our MIRe model directory) and
``kbridge mire export`` (its encoders → ONNX)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def convert_mire(
    ckpt: Path = typer.Option(..., "--ckpt", help="MIRe mire_*.pth ({'model': state_dict, ...})."),
    out_dir: Path = typer.Option(..., "--out", help="Directory to write; use it as [models] mire."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer",
                                             help="BERT tokenizer directory (default: the checkpoint's directory)."),
    trust: bool = typer.Option(False, "--trust-checkpoint",
                               help="Unpickle fully (can run code; only for trusted files). Not needed "
                                    "for the published checkpoint: its OmegaConf config loads as stand-ins."),
):
    """Convert a MIRe training checkpoint (ColBERTv2 BERT + projection, CLIP vision tower, pooling)."""
    from kbridge.cli.common import fail, out
    from kbridge.engine.retrieve.mire.checkpoint import CheckpointError, convert_published

    try:
        p = convert_published(ckpt, out_dir, tokenizer, trust)
    except CheckpointError as e:
        fail(str(e))
    out.print(f"wrote {p}: set [models] mire = \"{p}\" and [rank] retriever = \"mire\" (or \"both\")", markup=False)


mire_app = typer.Typer(no_args_is_help=True, help="MIRe, the late-interaction retriever: export its encoders.")


@mire_app.command("export")
def export_cmd(
    model: str = typer.Option("tiny", "--model", help="A convert-mire directory, or tiny (the random twin)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for query.onnx and doc.onnx (weights beside each)."),
    max_batch: int = typer.Option(64, "--max-batch", help="Largest batch the graphs are meant for."),
):
    """Export MIRe's query encoder (ids, mask, pixels → q) and document encoder (ids, attention_mask,
    keep → d) to ONNX, then check both against torch through onnxruntime on sample inputs."""
    from kbridge.cli.common import fail, out
    from kbridge.engine.config import build_config
    from kbridge.engine.errors import KbridgeError
    from kbridge.engine.retrieve.mire import onnx
    from kbridge.engine.retrieve.mire.checkpoint import resolve

    try:
        enc = resolve(model, build_config("tiny").cache_dir())
        paths = onnx.export(enc.model, out_dir, max_batch)
        diff = onnx.parity(enc.model, onnx.runners(enc.model, out_dir))
    except (KbridgeError, OSError) as e:
        fail(str(e))
    for name, p in paths.items():
        out.print(f"wrote {p} (onnxruntime vs torch: max |Δ| {diff[name]:.2e})", markup=False)
