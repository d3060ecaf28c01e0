"""The Cheff architecture with small configs: the tiny twin's (engine/twins.py) and the converter's test model.

Real Cheff (for comparison): UNet in/out 3 channels at 64², block_out_channels (224, 448, 896, 896),
2 blocks per level, cross-attention (1280, 8 heads) on all levels but the first; KL autoencoder
with 3 latent channels, block_out_channels (128, 256, 512) → 4×, 2 blocks; LDMBert 32 layers ×
1280; BERT (bert-base-uncased) tokenizer. The twin keeps every structural trait (3 latent
channels, a 4× autoencoder, 150 positions, cross-attention = text width) at toy widths.
"""
from __future__ import annotations


def tiny_parts(tokenizer, seed: int = 0, blocks: tuple = (32, 64), layers: int = 1,
               attention: tuple = (False, True), vae_blocks: tuple = (8, 16, 16), latent_size: int = 16,
               width: int = 32, text_layers: int = 2, max_tokens: int = 150) -> dict:
    """UNet, autoencoder (4× when vae_blocks has 3 entries), LDMBert and a DDIM scheduler set up as
    the CompVis LDM samples (leading spacing with offset 1, final alpha = alphas_cumprod[0])."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

    torch.manual_seed(seed)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    unet = UNet2DConditionModel(block_out_channels=blocks, layers_per_block=layers, sample_size=latent_size,
                                in_channels=3, out_channels=3, down_block_types=down, up_block_types=up,
                                cross_attention_dim=width, attention_head_dim=4, norm_num_groups=8).eval()
    vae = AutoencoderKL(block_out_channels=vae_blocks, in_channels=3, out_channels=3, latent_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
                        up_block_types=("UpDecoderBlock2D",) * len(vae_blocks), norm_num_groups=8,
                        layers_per_block=1, sample_size=latent_size * 2 ** (len(vae_blocks) - 1)).eval()
    bert = LDMBertModel(LDMBertConfig(vocab_size=len(tokenizer), max_position_embeddings=max_tokens,
                                      encoder_layers=text_layers, encoder_ffn_dim=2 * width, encoder_attention_heads=4,
                                      head_dim=width // 4, d_model=width)).eval()
    sched = DDIMScheduler(beta_start=0.0015, beta_end=0.0295, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    return {"unet": unet, "vqvae": vae, "bert": bert, "tokenizer": tokenizer, "scheduler": sched}

