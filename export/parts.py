"""Which models are exportable, and how to get each one's spec, IO module and weight files from a
loaded pipeline (the same objects the engine runs) or from the zoo."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kbridge.engine.config import PipelineConfig
from kbridge.export import specs as S
from kbridge.export import wrappers as W

PARTS = ("sdxl_base.unet", "sdxl_base.text_encoder", "sdxl_base.text_encoder_2", "sdxl_base.vae_decoder",
         "sdxl_base.vae_encoder", "sdxl_refiner.unet", "clip.vision", "clip.text")
"""Every exportable model, "<zoo slot>.<part>". The refiner reuses the base's VAE and second text
encoder (SDXLGenerator shares them), so only its UNet is its own."""

CLIP_MAX_BATCH = 64
"""The scorer's batch size: the CLIP towers' profile max."""


class UnknownPart(ValueError):
    """A name that is not in PARTS."""


@dataclass(frozen=True)
class Exportable:
    spec: S.ExportSpec
    module: torch.nn.Module
    """IO wrapper: positional inputs in spec order, tuple outputs in spec order."""
    weights: tuple[Path, ...]
    """Files whose bytes key the artifact (weights and config of the component)."""


def _files(d: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in Path(d).iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")))


def sdxl_parts(pipe, pipe_dir: Path, slot: str, cfg: PipelineConfig) -> dict[str, Exportable]:
    """The exportable parts of one loaded SDXL pipeline (base or refiner)."""
    g, rt = cfg.generation, cfg.runtime
    f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    lat = (g.height // f, g.width // f)
    cfg_mult = 2 if g.guidance > 1 else 1  # classifier-free guidance doubles the UNet batch
    d = Path(pipe_dir)
    out: dict[str, Exportable] = {}
    time_ids = 5 if getattr(pipe.config, "requires_aesthetics_score", False) else 6
    out[f"{slot}.unet"] = Exportable(
        S.unet_spec(f"{slot}.unet", pipe.unet, lat, time_ids, cfg_mult * rt.max_batch, cfg_mult * g.batch_size),
        W.UNetIO(pipe.unet), _files(d / "unet"))
    if slot == "sdxl_base":
        for te in ("text_encoder", "text_encoder_2"):
            enc = getattr(pipe, te)
            out[f"{slot}.{te}"] = Exportable(S.text_encoder_spec(f"{slot}.{te}", enc, rt.max_batch, g.batch_size),
                                             W.TextEncoderIO(enc), _files(d / te))
        out[f"{slot}.vae_decoder"] = Exportable(
            S.vae_decoder_spec(f"{slot}.vae_decoder", pipe.vae, lat, rt.max_batch, g.batch_size),
            W.VaeDecoderIO(pipe.vae), _files(d / "vae"))
        out[f"{slot}.vae_encoder"] = Exportable(
            S.vae_encoder_spec(f"{slot}.vae_encoder", pipe.vae, (g.height, g.width), rt.max_batch, g.batch_size),
            W.VaeEncoderIO(pipe.vae), _files(d / "vae"))
    return out


def clip_parts(clip, clip_dir: Path) -> dict[str, Exportable]:
    files = _files(Path(clip_dir))
    return {"clip.vision": Exportable(S.clip_vision_spec("clip.vision", clip, CLIP_MAX_BATCH, 16),
                                      W.ClipVisionIO(clip), files),
            "clip.text": Exportable(S.clip_text_spec("clip.text", clip, CLIP_MAX_BATCH, 16), W.ClipTextIO(clip), files)}


def load_parts(cfg: PipelineConfig, names: list[str] | None = None) -> dict[str, Exportable]:
    """Load the zoo models that ``names`` (default: all PARTS) need, on CPU in float32."""
    from kbridge.engine import zoo

    names = list(names or PARTS)
    bad = [n for n in names if n not in PARTS]
    if bad:
        raise UnknownPart(f"unknown model(s) {', '.join(bad)} (known: {', '.join(PARTS)})")
    slots = {n.split(".")[0] for n in names}
    out: dict[str, Exportable] = {}
    if "sdxl_base" in slots:
        from diffusers import StableDiffusionXLPipeline

        d = zoo.resolve("sdxl_base", cfg)
        out.update(sdxl_parts(StableDiffusionXLPipeline.from_pretrained(d), d, "sdxl_base", cfg))
    if "sdxl_refiner" in slots:
        from diffusers import StableDiffusionXLImg2ImgPipeline

        d = zoo.resolve("sdxl_refiner", cfg)
        out.update(sdxl_parts(StableDiffusionXLImg2ImgPipeline.from_pretrained(d), d, "sdxl_refiner", cfg))
    if "clip" in slots:
        from transformers import CLIPModel

        d = zoo.resolve("clip", cfg)
        out.update(clip_parts(CLIPModel.from_pretrained(d).eval(), d))
    return {n: out[n] for n in names}
