"""Report → chest X-ray with the Cheff latent diffusion model, our own batched DDIM loop.

Cheff is the CompVis LDM text-to-image architecture: a UNet with 1280-wide cross-attention, a KL
autoencoder with 3 latent channels and a 4× factor (64² latents → 256² images), a 32-layer,
1280-wide BERT-style text embedder reading at most 150 tokens, DDIM with 50 steps and eta 1, no
classifier-free guidance. diffusers represents every part (UNet2DConditionModel, AutoencoderKL,
LDMBertModel, DDIMScheduler), but its LDMTextToImagePipeline hard-codes an 8× latent factor and
77 tokens and passes no generator to the scheduler step, so with eta 1 the step noise would come
from the global RNG and depend on batch composition. Here every candidate has its own generator:
its initial latents and its noise at every stochastic step are drawn from it, so an X-ray is the
same whether rendered alone or in a batch.

The directory layout is the diffusers one of LDMTextToImagePipeline (``model_index.json``,
``unet/``, ``vqvae/``, ``bert/``, ``tokenizer/``, ``scheduler/``): the tiny twin and converted
real weights (``kbridge models convert-cheff``) load through this same code.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from kbridge.engine.config import MedicalConfig
from kbridge.engine.generate.sdxl import DiffusionCounters


def load_components(path: Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> dict:
    """The five parts of a Cheff directory; the three networks on ``device`` in ``dtype``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel
    from transformers import AutoTokenizer

    path = Path(path)
    return {
        "unet": UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=dtype).to(device).eval(),
        "vqvae": AutoencoderKL.from_pretrained(path / "vqvae", torch_dtype=dtype).to(device).eval(),
        "bert": LDMBertModel.from_pretrained(path / "bert", dtype=dtype).to(device).eval(),
        "tokenizer": AutoTokenizer.from_pretrained(path / "tokenizer"),
        "scheduler": DDIMScheduler.from_pretrained(path / "scheduler"),
    }


def save_components(parts: dict, out: Path) -> None:
    """Write the parts as a diffusers LDMTextToImagePipeline directory."""
    from diffusers import LDMTextToImagePipeline

    LDMTextToImagePipeline(vqvae=parts["vqvae"], bert=parts["bert"], tokenizer=parts["tokenizer"],
                           unet=parts["unet"], scheduler=parts["scheduler"]).save_pretrained(out)


def vae_factor(vae) -> int:
    """Spatial downsampling of the autoencoder: one halving per block but the last (4× for Cheff)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def to_grayscale_rgb(x: torch.Tensor) -> list[Image.Image]:
    """Decoded images [B, C, H, W] in [-1, 1] → 8-bit grayscale replicated to RGB (X-rays have one
    channel; the autoencoder's three output channels are averaged)."""
    g = ((x.float().mean(dim=1).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()  # [B, H, W]
    return [Image.fromarray(a, "L").convert("RGB") for a in g]


class CheffGenerator:
    """``render(prompts, seeds) -> images`` with ``counters``, like the SDXL generator."""

    def __init__(self, path: Path, cfg: MedicalConfig, max_tokens: int | None = None, clean=None):
        self.cfg = cfg
        self.clean = clean or (lambda text: text)
        """Report text → what the BERT embedder reads (the domain drops anonymisation tokens)."""
        self.device = torch.device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        p = load_components(path, self.dtype, cfg.device)
        self.unet, self.vae, self.bert, self.tok, self.scheduler = (p["unet"], p["vqvae"], p["bert"],
                                                                    p["tokenizer"], p["scheduler"])
        self.max_tokens = max_tokens or min(self.tok.model_max_length, self.bert.config.max_position_embeddings)
        self.latent_size = int(self.unet.config.sample_size)
        self.image_size = self.latent_size * vae_factor(self.vae)
        self.counters = DiffusionCounters()

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Reports → context [B, max_tokens, D]. Padded to max_tokens and run with no attention mask,
        as the CompVis BERT embedder was trained (its padding tokens are attended)."""
        ids = self.tok(prompts, padding="max_length", max_length=self.max_tokens, truncation=True,
                       return_tensors="pt").input_ids.to(self.device)
        return self.bert(ids)[0]

    def _noise(self, gens: list[torch.Generator], shape: tuple) -> torch.Tensor:
        # drawn on the CPU from each candidate's generator: the same numbers on any device. On a GPU
        # the host copy is pinned and the upload asynchronous: no host-device sync per DDIM step
        x = torch.stack([torch.randn(shape, generator=g) for g in gens])
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, self.dtype, non_blocking=True)
        return x.to(self.device, self.dtype)

    @torch.inference_mode()
    def sample(self, context: torch.Tensor, gens: list[torch.Generator],
               latents: torch.Tensor | None = None, steps: int | None = None) -> torch.Tensor:
        """DDIM from noise to latents [B, C, h, w]; ``gens[i]`` drives candidate i's initial noise
        (unless ``latents`` are given) and its noise at every step with eta > 0."""
        c = self.cfg
        shape = (self.unet.config.in_channels, self.latent_size, self.latent_size)
        x = self._noise(gens, shape) if latents is None else latents.to(self.device, self.dtype)
        self.scheduler.set_timesteps(steps or c.steps, device=self.device)
        x = x * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            eps = self.unet(x, t, encoder_hidden_states=context).sample
            self.counters.unet_evals += int(x.shape[0])
            noise = self._noise(gens, shape) if c.eta > 0 else None
            x = self.scheduler.step(eps, t, x, eta=c.eta, variance_noise=noise).prev_sample
        return x

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        x = self.vae.decode(latents / self.vae.config.scaling_factor).sample  # [B, C, H, W] in [-1, 1]
        self.counters.vae_decodes += int(x.shape[0])
        return to_grayscale_rgb(x)

    def _generators(self, seeds: list[int]) -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(int(s) % (2**63)) for s in seeds]

    def render(self, prompts: list[str], seeds: list[int], steps: int | None = None) -> list[Image.Image]:
        """One X-ray per (report, seed), in order, in batches of ``cfg.batch_size`` (``steps``:
        DDIM steps for this call instead of ``cfg.steps``)."""
        out: list[Image.Image] = []
        bs = max(1, self.cfg.batch_size)
        for i in range(0, len(prompts), bs):
            p, s = [self.clean(t) for t in prompts[i:i + bs]], seeds[i:i + bs]
            imgs = self.decode(self.sample(self.encode(p), self._generators(s), steps=steps))
            self.counters.images += len(imgs)
            out.extend(imgs)
        return out
