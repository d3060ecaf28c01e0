"""One small frozen spec per exportable model: named inputs and outputs with symbolic axes, the
min / opt / max range of every symbolic axis, and a sample-input builder.

A shape is a tuple of ints (static) and axis names (dynamic, e.g. "batch", "seq"). Spatial sizes
are static: they come from the profile (generation.height / width), so one exported graph and one
TensorRT profile serve one image size; the image size is part of the artifact key.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from kbridge.engine.errors import KbridgeError


class SpecError(KbridgeError, ValueError):
    """A spec is inconsistent (bad axis range, unknown axis, wrong input)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    """Ints and axis names, e.g. ("batch", 4, 32, 32)."""
    dtype: str = "float32"
    high: int = 0
    """For integer inputs (token ids): sample values are drawn from [0, high)."""


@dataclass(frozen=True)
class Axis:
    name: str
    min: int
    opt: int
    max: int
    example: int
    """Value used for the export trace: ≥ 2 and distinct from other axes' examples, because
    torch.export specialises sizes 0/1 and may unify equal sizes (STACK.md)."""


@dataclass(frozen=True)
class ExportSpec:
    name: str
    """Artifact name, "<zoo slot>.<part>", e.g. "sdxl_base.unet"."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axes: tuple[Axis, ...]

    def axis(self, name: str) -> Axis:
        for a in self.axes:
            if a.name == name:
                return a
        raise SpecError(f"{self.name}: unknown axis {name!r}")

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def shape(self, t: TensorSpec, dims: dict[str, int]) -> tuple[int, ...]:
        return tuple(dims[d] if isinstance(d, str) else d for d in t.shape)

    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """input name → (min, opt, max) shapes, the TensorRT optimisation profile."""
        pick = {k: {a.name: getattr(a, k) for a in self.axes} for k in ("min", "opt", "max")}
        return {t.name: (self.shape(t, pick["min"]), self.shape(t, pick["opt"]), self.shape(t, pick["max"]))
                for t in self.inputs}

    def dims_of(self, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
        """Axis sizes read off concrete inputs (checked for consistency and range)."""
        dims: dict[str, int] = {}
        for t in self.inputs:
            if t.name not in inputs:
                raise SpecError(f"{self.name}: missing input {t.name!r}")
            x = inputs[t.name]
            if x.dim() != len(t.shape):
                raise SpecError(f"{self.name}: input {t.name!r} has {x.dim()} dims, expected {len(t.shape)}")
            for d, n in zip(t.shape, x.shape):
                if isinstance(d, str):
                    if dims.setdefault(d, int(n)) != n:
                        raise SpecError(f"{self.name}: axis {d!r} is {dims[d]} and {n} at once")
                elif d != n:
                    raise SpecError(f"{self.name}: input {t.name!r} shape {tuple(x.shape)} != {t.shape}")
        for k, v in dims.items():
            a = self.axis(k)
            if not a.min <= v <= a.max:
                raise SpecError(f"{self.name}: axis {k!r}={v} outside [{a.min}, {a.max}]")
        return dims

    def sample(self, dims: dict[str, int] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """Random inputs (the export examples when ``dims`` is None)."""
        dims = {a.name: a.example for a in self.axes} | (dims or {})
        g = torch.Generator().manual_seed(seed)
        out = {}
        for t in self.inputs:
            shape = self.shape(t, dims)
            if t.dtype == "int64":
                out[t.name] = torch.randint(0, t.high, shape, generator=g, dtype=torch.int64)
            else:
                out[t.name] = torch.randn(shape, generator=g, dtype=getattr(torch, t.dtype))
        if "attention_mask" in out:  # a padded tail on the first row, as a tokenizer with padding gives
            m = out["attention_mask"] = torch.ones_like(out["attention_mask"])
            m[0, max(1, m.shape[1] // 2):] = 0
        return out

    def validate(self) -> None:
        names = {a.name for a in self.axes}
        for a in self.axes:
            if not 1 <= a.min <= a.opt <= a.max:
                raise SpecError(f"{self.name}: axis {a.name!r} needs 1 <= min <= opt <= max, got "
                                f"{a.min}, {a.opt}, {a.max}")
            if not (2 <= a.example and a.min <= a.example <= a.max):
                raise SpecError(f"{self.name}: axis {a.name!r} example {a.example} must be >= 2 and in range")
        for t in self.inputs + self.outputs:
            bad = {d for d in t.shape if isinstance(d, str)} - names
            if bad:
                raise SpecError(f"{self.name}: {t.name!r} uses unknown axes {sorted(bad)}")


def _batch(max_batch: int, opt: int) -> Axis:
    return Axis("batch", 1, max(1, min(opt, max_batch)), max_batch, 2 if max_batch >= 2 else 1)


def unet_spec(name: str, unet, latent_hw: tuple[int, int], time_ids: int, max_batch: int, opt_batch: int) -> ExportSpec:
    """SDXL UNet with its ``text_time`` added conditioning. With classifier-free guidance the pipeline
    runs 2 × images per forward, so callers pass batch bounds already doubled."""
    c = unet.config
    h, w = latent_hw
    pooled = unet.add_embedding.linear_1.in_features - time_ids * c.addition_time_embed_dim
    return ExportSpec(name, (
        TensorSpec("sample", ("batch", c.in_channels, h, w)),        # noisy latents [B, 4, h, w]
        TensorSpec("timestep", ("batch",)),                          # one timestep per row
        TensorSpec("encoder_hidden_states", ("batch", 77, c.cross_attention_dim)),
        TensorSpec("text_embeds", ("batch", pooled)),                # pooled text embedding
        TensorSpec("time_ids", ("batch", time_ids)),                 # size/crop (or aesthetic) ids
    ), (TensorSpec("noise_pred", ("batch", c.out_channels, h, w)),), (_batch(max_batch, opt_batch),))


def vae_decoder_spec(name: str, vae, latent_hw: tuple[int, int], max_batch: int, opt_batch: int) -> ExportSpec:
    c = vae.config
    f = 2 ** (len(c.block_out_channels) - 1)
    h, w = latent_hw
    return ExportSpec(name, (TensorSpec("latents", ("batch", c.latent_channels, h, w)),),
                      (TensorSpec("image", ("batch", c.out_channels, h * f, w * f)),), (_batch(max_batch, opt_batch),))


def vae_encoder_spec(name: str, vae, image_hw: tuple[int, int], max_batch: int, opt_batch: int) -> ExportSpec:
    """img2img: the encoder's diagonal Gaussian (mean, log-variance); sampling stays in torch."""
    c = vae.config
    f = 2 ** (len(c.block_out_channels) - 1)
    h, w = image_hw
    lat = ("batch", c.latent_channels, h // f, w // f)
    return ExportSpec(name, (TensorSpec("image", ("batch", c.in_channels, h, w)),),
                      (TensorSpec("mean", lat), TensorSpec("logvar", lat)), (_batch(max_batch, opt_batch),))


def text_encoder_spec(name: str, encoder, max_batch: int, opt_batch: int) -> ExportSpec:
    """SDXL text encoders: ids padded to 77; outputs the first model output (pooled projection for
    CLIPTextModelWithProjection, last hidden state for CLIPTextModel) and the penultimate hidden
    state, which is what the SDXL pipeline reads."""
    c = encoder.config
    projected = hasattr(encoder, "text_projection")
    first = ("batch", c.projection_dim) if projected else ("batch", 77, c.hidden_size)
    return ExportSpec(name, (TensorSpec("input_ids", ("batch", 77), "int64", c.vocab_size),),
                      (TensorSpec("embeds", first), TensorSpec("penultimate", ("batch", 77, c.hidden_size))),
                      (_batch(max_batch, opt_batch),))


def clip_vision_spec(name: str, clip, max_batch: int, opt_batch: int) -> ExportSpec:
    v = clip.config.vision_config
    return ExportSpec(name, (TensorSpec("pixel_values", ("batch", v.num_channels, v.image_size, v.image_size)),),
                      (TensorSpec("image_embeds", ("batch", clip.config.projection_dim)),),
                      (_batch(max_batch, opt_batch),))


def clip_text_spec(name: str, clip, max_batch: int, opt_batch: int) -> ExportSpec:
    """Dynamic sequence length: the scorer pads to the longest text of a batch, not to 77."""
    t = clip.config.text_config
    seq = Axis("seq", 1, min(32, t.max_position_embeddings), t.max_position_embeddings, 7)
    return ExportSpec(name, (TensorSpec("input_ids", ("batch", "seq"), "int64", t.vocab_size),
                             TensorSpec("attention_mask", ("batch", "seq"), "int64", 2)),
                      (TensorSpec("text_embeds", ("batch", clip.config.projection_dim)),),
                      (_batch(max_batch, opt_batch), seq))
