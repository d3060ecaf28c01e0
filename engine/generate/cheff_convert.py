"""Published Cheff checkpoints (CompVis LDM state dicts) → the diffusers directory cheff.py loads.

``cheff_diff_t2i.pt`` holds the LatentDiffusion model: ``model.diffusion_model.*`` (the openaimodel
UNet), ``cond_stage_model.transformer.*`` (the x-transformers BERT embedder), the ``betas`` buffer
and possibly ``first_stage_model.*`` and ``scale_factor``. ``cheff_autoencoder.pt`` holds the KL
autoencoder (``encoder.*``, ``decoder.*``, ``quant_conv``, ``post_quant_conv``; its ``loss.*``
discriminator is dropped). Lightning checkpoints wrap all of it in ``state_dict``.

The architecture is read from the tensors' shapes (channels, levels, blocks per level, where the
attention is, text width and length); what shapes cannot tell (attention heads, GroupNorm groups,
the image size) are arguments with Cheff's values (its published config: UNet 224 channels ×
(1, 2, 4, 4), 2 blocks per level, attention at 2×/4×/8× downsampling with 8 heads, context 1280;
autoencoder 128 × (1, 2, 4), 2 blocks, 3 latent channels; BERT embedder 1280 × 32 layers; linear
betas 0.0015 → 0.0295 over 1000 steps, which the checkpoint also stores; latent scale 0.18215). Every diffusers parameter must be found with
the right shape and every checkpoint tensor of a converted part must be used, or conversion fails.
``to_compvis`` is the inverse, for tests and for exporting back.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from kbridge.engine.errors import KbridgeError

log = logging.getLogger(__name__)

UNET, BERT, VAE = "model.diffusion_model.", "cond_stage_model.transformer.", "first_stage_model."
_UNET_RES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
             "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_RES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_BERT_ATTN = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}


class ConversionError(KbridgeError, ValueError):
    """A checkpoint does not have the Cheff / CompVis LDM layout."""


def _sub(rest: str, table: dict) -> str:
    for d, c in table.items():
        if rest == d or rest.startswith(d + "."):
            return c + rest[len(d):]
    raise ConversionError(f"no CompVis name for {rest!r}")


# ---------------------------------------------------------------- diffusers key → CompVis key

def unet_key(k: str, layers: int, up_attention: list[bool]) -> str:
    """UNet2DConditionModel parameter → openaimodel UNetModel parameter."""
    step = layers + 1
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
             "mid_block.attentions.0": "middle_block.1"}
    for d, c in fixed.items():
        if k.startswith(d + "."):
            return c + k[len(d):]
    if m := re.match(r"mid_block\.resnets\.(\d)\.(.+)", k):
        return f"middle_block.{2 * int(m[1])}." + _sub(m[2], _UNET_RES)
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", k):
        idx = 1 + int(m[1]) * step + int(m[3])
        return f"input_blocks.{idx}.0." + _sub(m[4], _UNET_RES) if m[2] == "resnets" else f"input_blocks.{idx}.1.{m[4]}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", k):
        return f"input_blocks.{1 + int(m[1]) * step + layers}.0.op.{m[2]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", k):
        idx = int(m[1]) * step + int(m[3])
        return f"output_blocks.{idx}.0." + _sub(m[4], _UNET_RES) if m[2] == "resnets" else f"output_blocks.{idx}.1.{m[4]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", k):
        i = int(m[1])
        return f"output_blocks.{i * step + layers}.{2 if up_attention[i] else 1}.{m[2]}"
    raise ConversionError(f"no CompVis name for UNet parameter {k!r}")


def vae_key(k: str, levels: int) -> str:
    """AutoencoderKL parameter → CompVis AutoencoderKL parameter."""
    if m := re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d)\.(.+)", k):
        if m[2] == "attentions":
            return f"{m[1]}.mid.attn_1." + _sub(m[4], _VAE_ATTN)
        return f"{m[1]}.mid.block_{int(m[3]) + 1}." + _sub(m[4], _VAE_RES)
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
        return f"encoder.down.{m[1]}.block.{m[2]}." + _sub(m[3], _VAE_RES)
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", k):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    # the decoder's up blocks run deepest first in diffusers, indexed by resolution in CompVis
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}." + _sub(m[3], _VAE_RES)
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", k):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    return k.replace("conv_norm_out", "norm_out")  # conv_in / conv_out / quant_conv keep their names


def bert_key(k: str) -> str:
    """LDMBertModel parameter → x-transformers TransformerWrapper parameter (attention and
    feed-forward are separate layers there: 2i and 2i+1, each (pre-norm, module))."""
    fixed = {"model.embed_tokens.weight": "token_emb.weight", "model.embed_positions.weight": "pos_emb.emb.weight"}
    if k in fixed:
        return fixed[k]
    if m := re.match(r"model\.layers\.(\d+)\.(.+)", k):
        i, rest = int(m[1]), m[2]
        if rest.startswith("self_attn_layer_norm."):
            return f"attn_layers.layers.{2 * i}.0." + rest.split(".", 1)[1]
        if rest.startswith("self_attn."):
            return f"attn_layers.layers.{2 * i}.1." + _sub(rest.split(".", 1)[1], _BERT_ATTN)
        if rest.startswith("final_layer_norm."):
            return f"attn_layers.layers.{2 * i + 1}.0." + rest.split(".", 1)[1]
        return f"attn_layers.layers.{2 * i + 1}.1." + _sub(rest, {"fc1": "net.0.0", "fc2": "net.2"})
    if k.startswith("model.layer_norm."):
        return "norm." + k.split(".", 2)[2]
    if k.startswith("to_logits."):
        return k
    raise ConversionError(f"no CompVis name for text-embedder parameter {k!r}")


def _is_vae_attn_linear(k: str) -> bool:
    return ".mid_block.attentions." in k and k.endswith(".weight") and "group_norm" not in k


# ---------------------------------------------------------------- shapes → configs

def _count(sd: dict, pattern: str) -> int:
    found = {int(m[1]) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def unet_config(sd: dict, heads: int | None, head_channels: int | None, groups: int, latent_size: int) -> dict:
    if "input_blocks.0.0.weight" not in sd:
        raise ConversionError("no UNet (model.diffusion_model.input_blocks.0.0.weight) in the checkpoint")
    n_in = _count(sd, r"input_blocks\.(\d+)\.")
    ops = sorted(int(m[1]) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight", k)))
    layers = (ops[0] - 1) if ops else n_in - 1
    levels = n_in // (layers + 1)
    chans = [sd[f"input_blocks.{1 + i * (layers + 1)}.0.out_layers.3.weight"].shape[0] for i in range(levels)]
    attn = [f"input_blocks.{1 + i * (layers + 1)}.1.proj_in.weight" in sd for i in range(levels)]
    ctx = next(v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight"))
    depth = _count(sd, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    per_level = tuple(c // head_channels for c in chans) if head_channels else heads or 8
    return dict(sample_size=latent_size, in_channels=sd["input_blocks.0.0.weight"].shape[1],
                out_channels=sd["out.2.weight"].shape[0], block_out_channels=tuple(chans), layers_per_block=layers,
                down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
                up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
                cross_attention_dim=ctx, attention_head_dim=per_level, transformer_layers_per_block=depth,
                use_linear_projection=sd["middle_block.1.proj_in.weight"].ndim == 2, norm_num_groups=groups)


def vae_config(sd: dict, groups: int, scale_factor: float, image_size: int) -> dict:
    if "encoder.conv_in.weight" not in sd:
        raise ConversionError("no autoencoder (encoder.conv_in.weight) in the autoencoder checkpoint")
    levels = _count(sd, r"encoder\.down\.(\d+)\.")
    chans = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels))
    return dict(in_channels=sd["encoder.conv_in.weight"].shape[1], out_channels=sd["decoder.conv_out.weight"].shape[0],
                block_out_channels=chans, layers_per_block=_count(sd, r"encoder\.down\.0\.block\.(\d+)\."),
                latent_channels=sd["quant_conv.weight"].shape[0] // 2, norm_num_groups=groups,
                down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                scaling_factor=scale_factor, sample_size=image_size)


def bert_config(sd: dict, heads: int) -> dict:
    if "token_emb.weight" not in sd:
        raise ConversionError("no text embedder (cond_stage_model.transformer.token_emb.weight) in the checkpoint")
    vocab, width = sd["token_emb.weight"].shape
    inner = sd["attn_layers.layers.0.1.to_q.weight"].shape[0]
    return dict(vocab_size=vocab, d_model=width, max_position_embeddings=sd["pos_emb.emb.weight"].shape[0],
                encoder_layers=_count(sd, r"attn_layers\.layers\.(\d+)\.") // 2, encoder_attention_heads=heads,
                head_dim=inner // heads, encoder_ffn_dim=sd["attn_layers.layers.1.1.net.0.0.weight"].shape[0])


# ---------------------------------------------------------------- loading weights

def _fill(model: torch.nn.Module, src: dict, name_of, what: str) -> None:
    """Load every parameter of ``model`` from ``src`` (CompVis names); all of src must be used."""
    state, used = {}, set()
    for k, ref in model.state_dict().items():
        ck = name_of(k)
        if ck not in src:
            raise ConversionError(f"{what}: checkpoint lacks {ck!r} (for {k})")
        v = src[ck]
        if _is_vae_attn_linear(k) and v.ndim == 4:
            v = v[:, :, 0, 0]  # CompVis 1×1 conv [C, C, 1, 1] → linear [C, C]
        if tuple(v.shape) != tuple(ref.shape):
            raise ConversionError(f"{what}: {ck} has shape {tuple(v.shape)}, expected {tuple(ref.shape)}")
        state[k] = v.to(ref.dtype)
        used.add(ck)
    unused = sorted(set(src) - used)
    if unused:
        raise ConversionError(f"{what}: {len(unused)} checkpoint tensors not used, e.g. {unused[:3]}")
    model.load_state_dict(state, strict=True)


def _part(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def read_state_dict(path: Path) -> dict:
    """A state dict from .pt/.ckpt (optionally Lightning-wrapped) or .safetensors."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpicklable Lightning object, a truncated file...
        raise ConversionError(f"cannot read {path} as plain tensors ({type(e).__name__}: {e}); re-save its "
                              "state_dict with torch.save(torch.load(p)['state_dict'], out)") from e
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise ConversionError(f"{path} holds no state dict")
    return sd


def convert_state_dicts(ldm: dict, ae: dict, tokenizer, *, image_size: int = 256, unet_heads: int | None = 8,
                        unet_head_channels: int | None = None, bert_heads: int = 8, groups: int = 32,
                        scale_factor: float | None = None, prediction_type: str = "epsilon",
                        linear_start: float = 0.0015, linear_end: float = 0.0295) -> dict:
    """Build the diffusers components from CompVis state dicts (``ae`` may be empty when ``ldm``
    carries ``first_stage_model.*``)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

    ae = _part(ae, VAE) if any(k.startswith(VAE) for k in ae) else dict(ae)
    ae = ae or _part(ldm, VAE)
    ae = {k: v for k, v in ae.items() if not k.startswith("loss.")}  # the training discriminator / LPIPS
    if scale_factor is None:
        # a buffer only when trained with scale_by_std; Cheff's config sets 0.18215
        scale_factor = float(ldm["scale_factor"]) if "scale_factor" in ldm else 0.18215
    vcfg = vae_config(ae, groups, scale_factor, image_size)
    vae = AutoencoderKL(**vcfg).eval()
    levels = len(vcfg["block_out_channels"])
    _fill(vae, ae, lambda k: vae_key(k, levels), "autoencoder")
    latent = image_size // 2 ** (levels - 1)

    u = _part(ldm, UNET)
    ucfg = unet_config(u, unet_heads, unet_head_channels, groups, latent)
    unet = UNet2DConditionModel(**ucfg).eval()
    up_attn = [t.startswith("CrossAttn") for t in ucfg["up_block_types"]]
    _fill(unet, u, lambda k: unet_key(k, ucfg["layers_per_block"], up_attn), "UNet")

    b = _part(ldm, BERT)
    bert = LDMBertModel(LDMBertConfig(**bert_config(b, bert_heads))).eval()
    if "to_logits.weight" not in b:  # unused at inference; some exports drop it
        b = {**b, "to_logits.weight": torch.zeros_like(bert.to_logits.weight),
             "to_logits.bias": torch.zeros_like(bert.to_logits.bias)}
    _fill(bert, b, bert_key, "text embedder")
    if len(tokenizer) != bert.config.vocab_size:
        raise ConversionError(f"tokenizer has {len(tokenizer)} tokens, the text embedder {bert.config.vocab_size} "
                              "(Cheff uses bert-base-uncased)")
    tokenizer.model_max_length = bert.config.max_position_embeddings

    common = dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                  prediction_type=prediction_type)
    if "betas" in ldm:  # the exact training schedule, as a buffer
        betas = ldm["betas"].double().tolist()
        sched = DDIMScheduler(num_train_timesteps=len(betas), trained_betas=betas, **common)
    else:
        sched = DDIMScheduler(beta_start=linear_start, beta_end=linear_end, beta_schedule="scaled_linear", **common)
    return {"unet": unet, "vqvae": vae, "bert": bert, "tokenizer": tokenizer, "scheduler": sched}


def convert_cheff(ckpt: Path, ae: Path | None, out: Path, tokenizer_dir: Path, **kw) -> Path:
    """Read the published checkpoints, convert, and write the diffusers directory ``out``."""
    from transformers import AutoTokenizer

    from kbridge.engine.generate.cheff import save_components

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot load a BERT tokenizer from {tokenizer_dir}: {e}") from e
    parts = convert_state_dicts(read_state_dict(ckpt), read_state_dict(ae) if ae else {}, tok, **kw)
    save_components(parts, Path(out))
    log.info("wrote %s", out)
    return Path(out)


def to_compvis(parts: dict, with_vae_in_ldm: bool = False) -> tuple[dict, dict]:
    """Diffusers components → (LDM state dict, autoencoder state dict) in the published layout."""
    unet, vae, bert = parts["unet"], parts["vqvae"], parts["bert"]
    layers = unet.config.layers_per_block
    up_attn = [t.startswith("CrossAttn") for t in unet.config.up_block_types]
    levels = len(vae.config.block_out_channels)
    ldm = {UNET + unet_key(k, layers, up_attn): v.clone() for k, v in unet.state_dict().items()}
    ldm.update({BERT + bert_key(k): v.clone() for k, v in bert.state_dict().items()})
    ae = {}
    for k, v in vae.state_dict().items():
        ae[vae_key(k, levels)] = v[:, :, None, None].clone() if _is_vae_attn_linear(k) else v.clone()
    if with_vae_in_ldm:
        ldm.update({VAE + k: v for k, v in ae.items()})
    ldm["betas"] = parts["scheduler"].betas.detach().clone().double()
    ldm["scale_factor"] = torch.tensor(float(vae.config.scaling_factor), dtype=torch.float64)
    return ldm, ae
