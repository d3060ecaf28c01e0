"""Thin nn.Modules with positional tensor inputs in spec order and tuple outputs: the exact
signatures that get exported, and that the torch runners call, so every backend runs one graph."""
from __future__ import annotations

import torch


class UNetIO(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
        # sample: [B, C, h, w], timestep: [B], encoder_hidden_states: [B, 77, D]
        cond = {"text_embeds": text_embeds, "time_ids": time_ids}
        return (self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=cond, return_dict=False)[0],)


class VaeDecoderIO(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        # latents: [B, 4, h, w] already divided by the scaling factor → image [B, 3, H, W] in [-1, 1]
        return (self.vae.decode(latents, return_dict=False)[0],)


class VaeEncoderIO(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        dist = self.vae.encode(image).latent_dist
        return dist.mean, dist.logvar


class TextEncoderIO(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids):
        out = self.encoder(input_ids, output_hidden_states=True)
        return out[0], out.hidden_states[-2]


def _features(x):
    # transformers 5 returns a model output whose pooler_output holds the projected features
    return x if isinstance(x, torch.Tensor) else x.pooler_output


class ClipVisionIO(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values):
        return (_features(self.clip.get_image_features(pixel_values=pixel_values)),)


class ClipTextIO(torch.nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids, attention_mask):
        return (_features(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)),)
