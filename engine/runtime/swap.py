"""Runners inside the models the engine already uses: diffusers pipelines keep their schedulers,
their UNets / VAE decoder / text encoders become thin nn.Modules that call runners; the CLIP
scorer gets tower runners. Attributes other than the forward (``config``, ``dtype``,
``add_embedding`` that pipelines read) are served by the wrapped torch module.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kbridge.engine.config import PipelineConfig

_INNER = "inner"


class _Delegating(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, runner):
        super().__init__()
        self.inner = inner
        self.runner = runner
        self.released = False

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__(_INNER), name)

    @property
    def device(self) -> torch.device:
        """Where the pipeline should put this module's inputs: the inner module's device, kept
        after its weights were released to ``meta``."""
        return self.__dict__["_kb_device"] if self.released else self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.__dict__["_kb_dtype"] if self.released else self.inner.dtype

    def release(self) -> None:
        """Free the torch weights once a compiled runner replaced them: parameters and buffers move
        to the ``meta`` device (shapes, dtypes and the config stay readable, which is all the
        pipeline reads), so SDXL's weights are not held twice on the GPU."""
        if self.released:
            return
        self.__dict__["_kb_device"], self.__dict__["_kb_dtype"] = self.inner.device, self.inner.dtype
        torch.nn.Module.to_empty(self.inner, device="meta")
        self.released = True


class RunnerUNet(_Delegating):
    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, cross_attention_kwargs=None,
                added_cond_kwargs=None, return_dict=True, **_):
        # sample: [B, C, h, w]; the pipeline passes one scalar timestep for the whole batch
        b = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device, dtype=torch.float32).reshape(-1).expand(b).contiguous()
        out = self.runner({"sample": sample, "timestep": t, "encoder_hidden_states": encoder_hidden_states,
                           "text_embeds": added_cond_kwargs["text_embeds"],
                           "time_ids": added_cond_kwargs["time_ids"]})["noise_pred"]
        out = out.to(sample.device, sample.dtype)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)


class RunnerVae(_Delegating):
    """Only ``decode`` runs through the runner; ``encode`` (img2img from pixels) stays in torch.
    With slicing on (``enable_slicing``, the GPU profiles) it decodes one image at a time, as
    diffusers' AutoencoderKL does: the fp32 decode's peak is one image's."""

    def decode(self, z, return_dict=True, generator=None, **_):
        parts = z.split(1) if getattr(self.inner, "use_slicing", False) and z.shape[0] > 1 else (z,)
        img = torch.cat([self.runner({"latents": p})["image"] for p in parts]).to(z.device, z.dtype)
        if return_dict:
            from diffusers.models.autoencoders.vae import DecoderOutput

            return DecoderOutput(sample=img)
        return (img,)


class _TextOut(tuple):
    """What the SDXL pipeline reads from a text encoder: ``out[0]`` and ``out.hidden_states[-2]``."""

    hidden_states: tuple


class RunnerTextEncoder(_Delegating):
    def forward(self, input_ids, output_hidden_states=None, **_):
        r = self.runner({"input_ids": input_ids})
        out = _TextOut((r["embeds"],))
        out.hidden_states = (r["penultimate"], None)  # only index -2 is defined
        return out


def _install(pipe, name: str, module: torch.nn.Module) -> None:
    # straight into __dict__: DiffusionPipeline.__setattr__ would rewrite its saved config
    pipe.__dict__[name] = module


RELEASING_BACKENDS = ("onnx", "tensorrt", "torch_tensorrt")
"""Backends whose runners hold no reference to the pipeline's torch module (a graph file, an engine,
torch-tensorrt's compiled copy): the swapped modules' torch weights are released after the swap."""


def swap_sdxl(base, refiner, base_dir: Path, refiner_dir: Path | None, cfg: PipelineConfig, make=None,
              release: bool | None = None) -> dict:
    """Swap runners into the loaded base (and refiner) pipelines; returns name → runner. ``release``
    (default: for the onnx / tensorrt backends) frees the swapped UNets' and text encoders' torch
    weights; the VAE stays (its encoder runs in torch for img2img from pixels)."""
    from kbridge.engine.runtime import make_runner
    from kbridge.export.parts import sdxl_parts

    make = make or make_runner
    # the runners go where this pipeline lives (a render worker may have been given another GPU than
    # generation.device): one device per stage, never GPU 0 by accident
    dev = str(base.unet.device)
    parts = sdxl_parts(base, base_dir, "sdxl_base", cfg)
    # a tiled decode (generation.vae_tiling, edge) stays in torch: a compiled decoder is full-frame
    tiled = bool(getattr(base.vae, "use_tiling", False))
    skip = {"sdxl_base.vae_encoder"} | ({"sdxl_base.vae_decoder"} if tiled else set())
    runners = {n: make(parts[n], cfg, dev) for n in parts if n not in skip}
    vae = base.vae if tiled else RunnerVae(base.vae, runners["sdxl_base.vae_decoder"])
    te2 = RunnerTextEncoder(base.text_encoder_2, runners["sdxl_base.text_encoder_2"])
    _install(base, "unet", RunnerUNet(base.unet, runners["sdxl_base.unet"]))
    _install(base, "text_encoder", RunnerTextEncoder(base.text_encoder, runners["sdxl_base.text_encoder"]))
    _install(base, "text_encoder_2", te2)
    _install(base, "vae", vae)
    if refiner is not None:
        rparts = sdxl_parts(refiner, refiner_dir, "sdxl_refiner", cfg)
        runners["sdxl_refiner.unet"] = make(rparts["sdxl_refiner.unet"], cfg, dev)
        _install(refiner, "unet", RunnerUNet(refiner.unet, runners["sdxl_refiner.unet"]))
        _install(refiner, "vae", vae)  # shared with the base, as SDXLGenerator loads it
        if refiner.text_encoder_2 is base.text_encoder_2.inner:
            _install(refiner, "text_encoder_2", te2)
        elif refiner.text_encoder_2 is not None:
            raise ValueError("refiner text_encoder_2 is not the base's: only the shared encoder is exported")
    if cfg.runtime.backend in RELEASING_BACKENDS if release is None else release:
        for pipe in (base, refiner):
            for name in ("unet", "text_encoder", "text_encoder_2"):
                m = getattr(pipe, name, None) if pipe is not None else None
                if isinstance(m, _Delegating):
                    m.release()
        if str(dev).startswith("cuda"):
            torch.cuda.empty_cache()
    return runners


def clip_towers(clip, clip_dir: Path, cfg: PipelineConfig, make=None) -> dict:
    """{"vision": runner, "text": runner} for ClipScorer."""
    from kbridge.engine.runtime import make_runner
    from kbridge.export.parts import clip_parts

    make = make or make_runner
    parts = clip_parts(clip, clip_dir)
    dev = str(clip.device)  # where the scorer's model was loaded
    return {"vision": make(parts["clip.vision"], cfg, dev), "text": make(parts["clip.text"], cfg, dev)}
