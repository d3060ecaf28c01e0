"""Full-size random twins: the real architectures at their published sizes, built from their
published configs with random weights, for timing on any GPU box without downloading weights.

Never the default. On the ``meta`` device they are built anywhere (shapes only, no memory) to
count parameters; on a CUDA device they are built there directly in the stage's dtype. The
configs are the published ``config.json`` values (stabilityai/stable-diffusion-xl-base-1.0 and
-refiner-1.0 ``unet/``, Qwen/Qwen2-VL-7B-Instruct, openai/clip-vit-large-patch14) and Cheff's
published LDM config (see engine/generate/cheff_convert.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kbridge.engine.errors import Unavailable


SDXL_BASE_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
SDXL_REFINER_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(384, 768, 1536, 1536),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=4,
    attention_head_dim=(6, 12, 24, 24), cross_attention_dim=1280, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2560)
SDXL_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=1024,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.13025, force_upcast=True)
QWEN2_VL_7B = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1_000_000.0, tie_word_embeddings=False,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
    vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, in_channels=3,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2))
CLIP_L14 = dict(
    projection_dim=768,
    text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=77, projection_dim=768),
    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=224, patch_size=14, projection_dim=768))
CHEFF_UNET = dict(
    sample_size=64, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(224, 448, 896, 896),
    down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
    up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",), attention_head_dim=8, cross_attention_dim=1280)
CHEFF_VAE = dict(in_channels=3, out_channels=3, latent_channels=3, layers_per_block=2, sample_size=256,
                 block_out_channels=(128, 256, 512), down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3)
CHEFF_BERT = dict(vocab_size=30522, max_position_embeddings=77, encoder_layers=32, encoder_ffn_dim=5120,
                  encoder_attention_heads=8, head_dim=64, d_model=1280)

PUBLISHED = {
    "sdxl_base.unet": (2.567e9, 0.01, "SDXL paper: 2.6B; the fp16 unet safetensors is 5.14 GB (2 bytes each)"),
    "sdxl_refiner.unet": (2.26e9, 0.02, "the refiner's fp16 unet safetensors is 4.52 GB (2 bytes each)"),
    "lmm": (8.29e9, 0.01, "Qwen2-VL-7B-Instruct model card: 8.29B parameters"),
    "clip": (427.6e6, 0.005, "openai/clip-vit-large-patch14: 427.6M parameters"),
}
"""Published sizes (count, relative tolerance, source) the meta-device counts are checked against."""

FULL_SIZE = ("sdxl_base.unet", "sdxl_refiner.unet", "sdxl.vae", "lmm", "clip", "cheff")


class FullSizeUnavailable(Unavailable):
    """Full-size twins need a CUDA GPU (or the meta device, to count parameters)."""


@dataclass(frozen=True)
class Built:
    name: str
    module: torch.nn.Module
    params: int


def _make(name: str) -> torch.nn.Module:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if name == "sdxl_base.unet":
        return UNet2DConditionModel(**SDXL_BASE_UNET)
    if name == "sdxl_refiner.unet":
        return UNet2DConditionModel(**SDXL_REFINER_UNET)
    if name == "sdxl.vae":
        return AutoencoderKL(**SDXL_VAE)
    if name == "lmm":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration(Qwen2VLConfig(**QWEN2_VL_7B))
    if name == "clip":
        from transformers import CLIPConfig, CLIPModel

        return CLIPModel(CLIPConfig(**CLIP_L14))
    if name == "cheff":
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

        return torch.nn.ModuleDict({"unet": UNet2DConditionModel(**CHEFF_UNET), "vae": AutoencoderKL(**CHEFF_VAE),
                                    "bert": LDMBertModel(LDMBertConfig(**CHEFF_BERT))})
    raise ValueError(f"unknown full-size model {name!r} (known: {', '.join(FULL_SIZE)})")


def check_device(device: str) -> torch.device:
    d = torch.device(device)
    if d.type == "meta":
        return d
    if d.type != "cuda" or not torch.cuda.is_available():
        raise FullSizeUnavailable("full-size twins need a CUDA GPU (use --device meta to count their parameters)")
    return d


def build(name: str, device: str = "meta", dtype: torch.dtype = torch.float16) -> Built:
    """One full-size twin on ``device`` (random weights, eval mode, in ``dtype``)."""
    d = check_device(device)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # created in dtype: no fp32 copy first (33 GB for the 8B LMM)
    try:
        with torch.device(d):  # and on d directly: no CPU copy either
            m = _make(name)
    finally:
        torch.set_default_dtype(prev)
    m = m.to(dtype=dtype).eval()
    return Built(name, m, sum(p.numel() for p in m.parameters()))


def param_counts(names=FULL_SIZE, device: str = "meta") -> dict[str, int]:
    """name → parameter count; each model is dropped before the next is built."""
    out = {}
    for n in names:
        b = build(n, device)
        out[n] = b.params
        del b
    return out
