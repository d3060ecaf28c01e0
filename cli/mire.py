"""``kbridge models convert-mire``: a published MIRe checkpoint → our MIRe model directory."""
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
