"""Which models are exportable, and how to get each one's spec, IO module and weight files from a
loaded pipeline (the same objects the engine runs) or from the zoo."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kbridge.engine.config import PipelineConfig
from kbridge.export import specs as S
from kbridge.export import wrappers as W
from kbridge.engine.errors import KbridgeError

PARTS = ("sdxl_base.unet", "sdxl_base.text_encoder", "sdxl_base.text_encoder_2", "sdxl_base.vae_decoder",
         "sdxl_base.vae_encoder", "sdxl_refiner.unet", "clip.vision", "clip.text")
"""Every exportable model, "<zoo slot>.<part>". The refiner reuses the base's VAE and second text
encoder (SDXLGenerator shares them), so only its UNet is its own."""

CLIP_MAX_BATCH = 64
"""The scorer's batch size: the CLIP towers' profile max."""


class UnknownPart(KbridgeError, ValueError):
    """A name that is not in PARTS."""


@dataclass(frozen=True)
class Exportable:
    spec: S.ExportSpec
    module: torch.nn.Module
    """IO wrapper: positional inputs in spec order, tuple outputs in spec order."""
    weights: tuple[Path, ...]
    """Files whose bytes key the artifact (weights and config of the component)."""
    fp16_safe: bool = True
    """False for the SDXL VAE unless its config says ``force_upcast: false`` (an fp16-fix VAE, ``generation.vae``): the
    stock SDXL VAE overflows in float16 (NaN / black images), so its graphs stay float32 whatever
    ``runtime.fp16`` says, as diffusers upcasts it in torch."""


def runtime_for(ex: Exportable, rt):
    """The runtime settings a part is exported / built / run with: ``fp16`` off for fp16-unsafe parts."""
    import dataclasses

    return rt if ex.fp16_safe or not rt.fp16 else dataclasses.replace(rt, fp16=False)


def max_batch(cfg: PipelineConfig, batch_size: int) -> int:
    """A profile's max batch: ``runtime.max_batch``, never below the stage's batch size, and ≥ 2 (the
    export example must be ≥ 2). GPU profiles set it to their batch size: an engine's activation
    memory is sized for the profile max (64 UNet rows at 1024² do not fit a 24 GB card)."""
    return max(cfg.runtime.max_batch, batch_size, 2)


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
    mb = max_batch(cfg, g.batch_size)
    out[f"{slot}.unet"] = Exportable(
        S.unet_spec(f"{slot}.unet", pipe.unet, lat, time_ids, cfg_mult * mb, cfg_mult * g.batch_size),
        W.UNetIO(pipe.unet), _files(d / "unet"))
    if slot == "sdxl_base":
        for te in ("text_encoder", "text_encoder_2"):
            enc = getattr(pipe, te)
            out[f"{slot}.{te}"] = Exportable(S.text_encoder_spec(f"{slot}.{te}", enc, mb, g.batch_size),
                                             W.TextEncoderIO(enc), _files(d / te))
        vae_fp16 = not getattr(pipe.vae.config, "force_upcast", True)
        vae_files = _files(Path(g.vae).expanduser()) if g.vae else _files(d / "vae")
        out[f"{slot}.vae_decoder"] = Exportable(
            S.vae_decoder_spec(f"{slot}.vae_decoder", pipe.vae, lat, mb, g.batch_size),
            W.VaeDecoderIO(pipe.vae), vae_files, vae_fp16)
        out[f"{slot}.vae_encoder"] = Exportable(
            S.vae_encoder_spec(f"{slot}.vae_encoder", pipe.vae, (g.height, g.width), mb, g.batch_size),
            W.VaeEncoderIO(pipe.vae), vae_files, vae_fp16)
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
