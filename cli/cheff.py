"""``kbridge models convert-cheff``: the published Cheff checkpoints → a local model directory."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def convert_cheff(
    ckpt: Path = typer.Option(..., "--ckpt", help="cheff_diff_t2i.pt (the report-to-image LDM)."),
    ae: Optional[Path] = typer.Option(None, "--ae", help="cheff_autoencoder.pt (else first_stage_model.* of --ckpt)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory to write (diffusers layout); use it as [models] cheff."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Local bert-base-uncased tokenizer directory (vocab.txt)."),
    image_size: int = typer.Option(256, "--image-size", help="Output size (Cheff: 256 from 64² latents)."),
    unet_heads: int = typer.Option(8, "--unet-heads", help="UNet attention heads (the config's num_heads)."),
    unet_head_channels: Optional[int] = typer.Option(None, "--unet-head-channels",
                                                     help="Instead of --unet-heads: channels per head."),
    bert_heads: int = typer.Option(8, "--bert-heads", help="Text-embedder attention heads."),
    scale_factor: Optional[float] = typer.Option(None, "--scale-factor",
                                                 help="Latent scale (default: the checkpoint's, else Cheff's 0.18215)."),
):
    """Convert Cheff's CompVis-layout checkpoints (super-resolution stage not included)."""
    from kbridge.cli.common import fail, out
    from kbridge.engine.generate.cheff_convert import ConversionError, convert_cheff as convert

    try:
        p = convert(ckpt, ae, out_dir, tokenizer, image_size=image_size, unet_heads=unet_heads,
                    unet_head_channels=unet_head_channels, bert_heads=bert_heads, scale_factor=scale_factor)
    except ConversionError as e:
        fail(str(e))
    out.print(f"wrote {p}: set [models] cheff = \"{p}\" and run with --domain chest_xray")
