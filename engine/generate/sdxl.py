"""SDXL base + refiner on latents, batched across candidates and samples.

Each image has its own generator seeded per (sample, candidate), so an image does not depend on
what it was batched with; the base hands its latents to the refiner at ``high_noise_frac``
without decoding. With the refiner off the base runs the whole schedule (the reference stops the
base at 80% regardless and returns half-denoised images).
"""
from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import threading
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
        self._lock = threading.Lock()
        # lanes on a CPU under torch only: not with float16 weights (a float16 SDXL VAE is cast to
        # float32 and back around each decode, force_upcast: a change of a module the lanes share),
        # nor with runners (onnxruntime / compiled graphs keep threads and state of their own)
        cpu = torch.device(cfg.device).type == "cpu"
        self.lanes = max(1, cfg.split) if cpu and dtype != torch.float16 and swap is None else 1
        self._replicas = [(self.base, self.refiner)] + [(_replica(self.base), _replica(self.refiner))
                                                         for _ in range(self.lanes - 1)]
        self._pool = concurrent.futures.ThreadPoolExecutor(self.lanes, thread_name_prefix="kbridge-render-lane") \
            if self.lanes > 1 else None
        for pipe in (self.base, self.refiner):
            if pipe is not None:
                pipe.unet.register_forward_pre_hook(self._count_unet, with_kwargs=True)

    def _count_unet(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        with self._lock:  # split lanes count from their own threads
            self.counters.unet_evals += int(sample.shape[0])

    def _generators(self, seeds: list[int]) -> list[torch.Generator]:
        dev = torch.device(self.cfg.device)
        return [torch.Generator(dev.type if dev.type != "cuda" else dev).manual_seed(int(s) % (2**63)) for s in seeds]

    def _batches(self, n: int, start: int = 0):
        b = max(1, self.cfg.batch_size)
        return [slice(i, min(start + n, i + b)) for i in range(start, start + n, b)]

    def _map(self, fn, n: int) -> list:
        """``fn(base, refiner, sl)`` over micro-batch slices of ``n`` images, the results in order.
        With ``split`` lanes (CPU) each lane renders ``n // split`` images on its own thread with
        1/split of the torch threads, then the remainder runs here on all of them (7 candidates on
        2 lanes: 3 + 3, then 1 on both cores, not 4 on one lane while the other idles)."""
        k = min(self.lanes, n)
        if k <= 1:
            return [fn(self.base, self.refiner, sl) for sl in self._batches(n)]
        q = n // k
        total = torch.get_num_threads()
        each = max(1, total // k)
        ready = threading.Barrier(k + 1)

        def lane(w: int) -> list:
            # torch's thread count is per thread once a thread has set it (the lazy first-use setup
            # done first, or it would overwrite it), but setting it also changes the process default
            # that threads started later begin with: the caller puts that back once every lane is set
            try:
                torch.get_num_threads()
                torch.set_num_threads(each)
            finally:  # the caller waits for every lane here
                ready.wait()
            base, refiner = self._replicas[w]
            with torch.inference_mode():
                return [fn(base, refiner, sl) for sl in self._batches(q, w * q)]

        futs = [self._pool.submit(lane, w) for w in range(k)]
        ready.wait()
        torch.set_num_threads(total)
        concurrent.futures.wait(futs)  # every lane ends before an error is raised
        out = [r for f in futs for r in f.result()]
        return out + [fn(self.base, self.refiner, sl) for sl in self._batches(n - k * q, k * q)]

    @torch.inference_mode()
    def base_latents(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """The base's part of the schedule for every (prompt, seed): latents [N, 4, H/8, W/8] at
        the hand-over to the refiner, as the refiner takes them."""
        c = self.cfg
        out = self._map(lambda base, _, sl: base(
            prompt=prompts[sl], height=c.height, width=c.width, denoising_end=c.high_noise_frac,
            generator=self._generators(seeds[sl]), output_type="latent", num_inference_steps=c.steps,
            guidance_scale=c.guidance).images, len(prompts))
        return torch.cat(out) if out else torch.empty(0)

    @torch.inference_mode()
    def refine(self, latents: torch.Tensor, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        """The refiner's part and the full VAE decode, for latents from ``base_latents`` (the same
        seeds: the refiner's noise is drawn from the same per-image generators as in ``render``)."""
        c = self.cfg
        out = [im for part in self._map(lambda _, refiner, sl: refiner(
            prompt=prompts[sl], image=latents[sl], denoising_start=c.high_noise_frac,
            generator=self._generators(seeds[sl]), output_type="pil", num_inference_steps=c.steps,
            guidance_scale=c.guidance).images, len(prompts)) for im in part]
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
        """One image per (prompt, seed), in order, in batches of ``cfg.batch_size`` (on ``split``
        lanes, ``_map``); ``steps`` overrides ``cfg.steps`` for this call. ``stop()`` is asked after
        every denoising step (diffusers' step-end callback): when true the call raises ``Interrupted``."""
        c = self.cfg if steps is None else replace(self.cfg, steps=steps)
        common = dict(num_inference_steps=c.steps, guidance_scale=c.guidance)
        if stop is not None:
            common["callback_on_step_end"] = _stopper(stop)

        def one(base, refiner, sl) -> list[Image.Image]:
            p, gens = prompts[sl], (lambda: self._generators(seeds[sl]))
            if refiner is not None and c.high_noise_frac < 1.0:
                lat = base(prompt=p, height=c.height, width=c.width, denoising_end=c.high_noise_frac,
                           generator=gens(), output_type="latent", **common).images
                return refiner(prompt=p, image=lat, denoising_start=c.high_noise_frac, generator=gens(),
                               output_type="pil", **common).images
            return base(prompt=p, height=c.height, width=c.width, generator=gens(), output_type="pil", **common).images

        out = [im for part in self._map(one, len(prompts)) for im in part]
        self.counters.vae_decodes += len(out)  # on the caller's thread, after every lane has ended
        self.counters.images += len(out)
        return out


def _replica(pipe):
    """``pipe`` with its own scheduler (which holds the denoising loop's step state), tokenizers
    (a Rust-backed tokenizer sets its truncation on the shared backend for each call: two threads
    sharing one can each undo the other's and pass an untruncated prompt to the 77-position text
    encoder) and per-call attributes, sharing every module (the weights are read-only)."""
    if pipe is None:
        return None
    twin = copy.copy(pipe)  # a new __dict__: diffusers sets _guidance_scale etc. per call on the instance
    for name in ("scheduler", "tokenizer", "tokenizer_2"):
        if getattr(pipe, name, None) is not None:
            object.__setattr__(twin, name, copy.deepcopy(getattr(pipe, name)))
    return twin


class Interrupted(KbridgeError):
    """A render stopped between denoising steps: every row it was for was cancelled."""


def _stopper(stop):
    def on_step_end(pipe, step, timestep, kwargs):
        if stop():
            raise Interrupted(f"stopped after denoising step {step + 1}")
        return kwargs
    return on_step_end
