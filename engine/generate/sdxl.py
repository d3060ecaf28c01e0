"""SDXL base + refiner on latents, batched across candidates and samples.

Each image has its own generator seeded per (sample, candidate), so an image does not depend on
what it was batched with; the base hands its latents to the refiner at ``high_noise_frac``
without decoding. With the refiner off the base runs the whole schedule (the reference stops the
base at 80% regardless and returns half-denoised images).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from kbridge.engine.config import GenerationConfig
from kbridge.engine.errors import KbridgeError


LATENT_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
              (-0.3165, -0.2492, -0.2188))
LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)
"""A linear least-squares map from SDXL's 4 latent channels to RGB in [-1, 1] (the widely used
preview coefficients for the SDXL VAE); only a preview: random-weight twins' latents are not
the real VAE's, so their previews are colour noise."""


@dataclass
class DiffusionCounters:
    unet_evals: int = 0
    """UNet evaluations, counted per image (a CFG forward on 2 images counts 2)."""
    vae_decodes: int = 0
    preview_decodes: int = 0
    """Cheap previews of base latents (``refine_top``): linear projections or half-size VAE decodes."""
    images: int = 0


def gpu_options(pipe, cfg: GenerationConfig) -> list[str]:
    """Apply the generation section's memory / speed options to one loaded pipeline (before any
    runner swap); returns what was applied. Each is a diffusers or torch switch, nothing more."""
    done = []
    if cfg.fuse_qkv:
        pipe.unet.fuse_qkv_projections()  # one [3D, D] matmul per attention instead of three
        done.append("fuse_qkv")
    if cfg.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        done.append("channels_last")
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        if cfg.channels_last:
            vae.to(memory_format=torch.channels_last)
        if cfg.vae_slicing:
            vae.enable_slicing()
            done.append("vae_slicing")
        if cfg.vae_tiling:
            vae.enable_tiling()
            done.append("vae_tiling")
    return done


def decode_upcast(vae, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode(z / scaling)`` as float32 the way diffusers' SDXL pipelines decode: an fp16 VAE
    whose config says ``force_upcast`` (the stock SDXL VAE overflows to NaN in fp16) runs in fp32
    for the call. A compiled runner's static spec fits only full-size latents, so a wrapped VAE
    (runtime/swap.py ``RunnerVae``) decodes with its torch module."""
    vae = getattr(vae, "inner", vae)
    upcast = vae.dtype == torch.float16 and bool(vae.config.force_upcast)
    if upcast:
        vae.to(torch.float32)
    try:
        return vae.decode(z.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0].float()
    finally:
        if upcast:
            vae.to(torch.float16)


class SDXLGenerator:
    def __init__(self, base_path: Path, refiner_path: Path | None, cfg: GenerationConfig, swap=None):
        """``swap(base, refiner)`` may replace pipeline components with runners (engine/runtime)
        before the counting hooks go on. ``cfg.vae``: an AutoencoderKL directory replacing the
        base's VAE (e.g. the fp16-fix VAE, whose ``force_upcast: false`` skips the fp32 decode)."""
        from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        extra = {"vae": AutoencoderKL.from_pretrained(Path(cfg.vae).expanduser(), dtype=dtype)} if cfg.vae else {}
        self.base = StableDiffusionXLPipeline.from_pretrained(base_path, dtype=dtype, **extra).to(cfg.device)
        self.base.set_progress_bar_config(disable=True)
        self.refiner = None
        if cfg.refiner and refiner_path is not None:
            # the refiner shares the base's VAE and second text encoder (identical in SDXL 1.0)
            self.refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
                refiner_path, dtype=dtype, vae=self.base.vae,
                text_encoder_2=self.base.text_encoder_2).to(cfg.device)
            self.refiner.set_progress_bar_config(disable=True)
        self.options = gpu_options(self.base, cfg)
        if self.refiner is not None:
            gpu_options(self.refiner, dataclasses.replace(cfg, vae_slicing=False, vae_tiling=False))  # VAE shared
        if swap is not None:
            swap(self.base, self.refiner)
        self.counters = DiffusionCounters()
        for pipe in (self.base, self.refiner):
            if pipe is not None:
                pipe.unet.register_forward_pre_hook(self._count_unet, with_kwargs=True)

    def _count_unet(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.counters.unet_evals += int(sample.shape[0])

    def _generators(self, seeds: list[int]) -> list[torch.Generator]:
        dev = torch.device(self.cfg.device)
        return [torch.Generator(dev.type if dev.type != "cuda" else dev).manual_seed(int(s) % (2**63)) for s in seeds]

    def _batches(self, n: int):
        b = max(1, self.cfg.batch_size)
        return [slice(i, min(n, i + b)) for i in range(0, n, b)]

    @torch.inference_mode()
    def base_latents(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """The base's part of the schedule for every (prompt, seed): latents [N, 4, H/8, W/8] at
        the hand-over to the refiner, as the refiner takes them."""
        c = self.cfg
        out = [self.base(prompt=prompts[sl], height=c.height, width=c.width, denoising_end=c.high_noise_frac,
                         generator=self._generators(seeds[sl]), output_type="latent", num_inference_steps=c.steps,
                         guidance_scale=c.guidance).images for sl in self._batches(len(prompts))]
        return torch.cat(out) if out else torch.empty(0)

    @torch.inference_mode()
    def refine(self, latents: torch.Tensor, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        """The refiner's part and the full VAE decode, for latents from ``base_latents`` (the same
        seeds: the refiner's noise is drawn from the same per-image generators as in ``render``)."""
        c = self.cfg
        out: list[Image.Image] = []
        for sl in self._batches(len(prompts)):
            out += self.refiner(prompt=prompts[sl], image=latents[sl], denoising_start=c.high_noise_frac,
                                generator=self._generators(seeds[sl]), output_type="pil", num_inference_steps=c.steps,
                                guidance_scale=c.guidance).images
        self.counters.vae_decodes += len(out)
        self.counters.images += len(out)
        return out

    @torch.inference_mode()
    def preview(self, latents: torch.Tensor, mode: str = "linear") -> list[Image.Image]:
        """Cheap images of latents [N, 4, h, w], at the full output size: "linear" projects the 4
        latent channels to RGB with fixed coefficients (no network); "vae" decodes at half size."""
        c = self.cfg
        if not len(latents):
            return []
        if mode == "vae":
            z = torch.nn.functional.interpolate(latents.float(), scale_factor=0.5, mode="bilinear")
            rgb = decode_upcast(self.base.vae, z)
        else:
            w = torch.tensor(LATENT_RGB, dtype=torch.float32, device=latents.device)  # [4, 3]
            b = torch.tensor(LATENT_RGB_BIAS, dtype=torch.float32, device=latents.device)
            rgb = torch.einsum("nchw,cr->nrhw", latents.float(), w) + b[None, :, None, None]
        rgb = torch.nn.functional.interpolate(rgb, size=(c.height, c.width), mode="bilinear")
        arr = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        self.counters.preview_decodes += len(arr)
        return [Image.fromarray(a) for a in arr]

    @torch.inference_mode()
    def render(self, prompts: list[str], seeds: list[int], steps: int | None = None,
               stop=None) -> list[Image.Image]:
        """One image per (prompt, seed), in order, in batches of ``cfg.batch_size``; ``steps``
        overrides ``cfg.steps`` for this call. ``stop()`` is asked after every denoising step
        (diffusers' step-end callback): when true the call raises ``Interrupted`` there."""
        c = self.cfg if steps is None else replace(self.cfg, steps=steps)
        out: list[Image.Image] = []
        for i in range(0, len(prompts), max(1, c.batch_size)):
            p, s = prompts[i:i + c.batch_size], seeds[i:i + c.batch_size]
            common = dict(num_inference_steps=c.steps, guidance_scale=c.guidance)
            if stop is not None:
                common["callback_on_step_end"] = _stopper(stop)
            if self.refiner is not None and c.high_noise_frac < 1.0:
                lat = self.base(prompt=p, height=c.height, width=c.width, denoising_end=c.high_noise_frac,
                                generator=self._generators(s), output_type="latent", **common).images
                imgs = self.refiner(prompt=p, image=lat, denoising_start=c.high_noise_frac,
                                    generator=self._generators(s), output_type="pil", **common).images
            else:
                imgs = self.base(prompt=p, height=c.height, width=c.width, generator=self._generators(s),
                                 output_type="pil", **common).images
            self.counters.vae_decodes += len(imgs)
            self.counters.images += len(imgs)
            out.extend(imgs)
        return out


class Interrupted(KbridgeError):
    """A render stopped between denoising steps: every row it was for was cancelled."""


def _stopper(stop):
    def on_step_end(pipe, step, timestep, kwargs):
        if stop():
            raise Interrupted(f"stopped after denoising step {step + 1}")
        return kwargs
    return on_step_end
