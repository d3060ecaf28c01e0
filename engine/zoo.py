"""Model directories: a local Hugging Face / diffusers layout directory, or a tiny twin.

A tiny twin is the real architecture (real transformers / diffusers classes) with a small config,
random weights and a locally built tokenizer. It is built deterministically into the cache on
first use and then loaded by the same ``from_pretrained`` code as real weights, so the tiny
profile exercises the real loading path.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kbridge.engine.config import PipelineConfig
from kbridge.engine.errors import KbridgeError

log = logging.getLogger(__name__)

ZOO_VERSION = 1
"""Bump when a tiny builder changes, so caches rebuild."""

MODELS = {
    "lmm": ("Qwen2-VL", "Qwen2-VL-7B-Instruct (or -72B-Instruct-GPTQ-Int8 under vLLM)"),
    "lmm_vllm_cpu": ("Idefics3", "the VL twin vLLM serves on CPU (Qwen2-VL under vLLM needs a GPU box)"),
    "sdxl_base": ("SDXL base", "stable-diffusion-xl-base-1.0"),
    "sdxl_refiner": ("SDXL refiner", "stable-diffusion-xl-refiner-1.0"),
    "clip": ("CLIP", "clip-vit-large-patch14"),
    "cheff": ("Cheff LDM", "Cheff cheff_diff_t2i.pt + cheff_autoencoder.pt via `kbridge models convert-cheff`"),
    "med_clip": ("medical CLIP", "a CLIP-layout medical image-text model, e.g. PubMedCLIP"),
    "blip": ("BLIP (ITC + ITM)", "blip-itm-large-coco"),
    "mire": ("MIRe (ColBERTv2 + CLIP ViT-B/32)", "a MIRe mire_*.pth via `kbridge models convert-mire`"),
}
"""Model slot → (architecture, the real checkpoint the slot is meant for)."""

# A few hundred words for the tiny tokenizers: enough merges that text is not all single bytes.
_CORPUS = """a an the of in on at with and or to from by for is are was were has have near under over
photo image picture scene man woman person people child cat dog horse bird car bus train street
road tree grass sky cloud sun moon star galaxy space rocket tower launch pad astronaut flag
helmet suit orange white black red green blue yellow grey gray brown dark light small large tall
wooden table cup coffee espresso saucer spoon plate food kitchen room wall brick window door
clock coin ancient camera tripod field park water sea beach mountain snow city building house
chest x ray lung heart left right pleural effusion opacity normal acute findings impression
object objects count attributes style triples head relation tail caption captions prompts prompt
holds holding sitting standing next to behind front above below contains wearing looking
realistic photograph detailed lighting high quality cinematic painting drawing silhouette
{"objects": [{"name": "cat", "count": 1, "attributes": ["small"]}], "style": "photo",
"triples": [{"head": "cat", "relation": "on", "tail": "sofa"}]} {"captions": [{"text": "x"}]}
"""


def _words() -> list[str]:
    return sorted({w.strip('{}[]":,.').lower() for w in _CORPUS.split()} - {""})


@dataclass(frozen=True)
class ModelEntry:
    name: str
    spec: str  # "tiny" or a directory
    path: Path
    source: str  # "tiny" | "path"
    ready: bool
    size_bytes: int


class ModelNotFound(KbridgeError, FileNotFoundError):
    """A configured model directory does not exist or is not a model directory."""


def _dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0


SIZES = ("tiny", "small")
"""Twin sizes: ``tiny`` for tests and the default profile, ``small`` (same architectures, wider
and deeper, so model compute rather than Python overhead dominates) for CPU benchmarks."""


def tiny_dir(name: str, cache_dir: Path, size: str = "tiny") -> Path:
    return Path(cache_dir) / "zoo" / f"{size}-{name}-v{ZOO_VERSION}"


def resolve(name: str, cfg: PipelineConfig) -> Path:
    """The directory to load model slot ``name`` from, building the twin if needed."""
    spec = getattr(cfg.models, name)
    if spec in SIZES:
        return ensure_tiny(name, cfg.cache_dir(), spec)
    p = Path(spec).expanduser()
    if not (p / "config.json").exists() and not (p / "model_index.json").exists():
        raise ModelNotFound(f"model {name}: {p} is not a model directory (no config.json or "
                            f"model_index.json); expected a local copy of {MODELS[name][1]}")
    return p


def ensure_tiny(name: str, cache_dir: Path, size: str = "tiny", builder=None) -> Path:
    """Build the twin once (atomically: built aside, then renamed into place). ``builder(out)``
    builds twins outside the engine's model slots (e.g. ``dicmor``)."""
    target = tiny_dir(name, cache_dir, size)
    if (target / ".complete").exists():
        return target
    from kbridge.engine.locks import exclusive

    with exclusive(target.parent / f".{target.name}.lock"):  # another process building it: wait, then reuse
        if (target / ".complete").exists():
            return target
        return _build_tiny(name, target, size, builder)


def _build_tiny(name: str, target: Path, size: str, builder) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        log.info("building %s %s into %s", size, name, target)
        if builder is not None:
            builder(tmp)
        elif size == "tiny":
            _BUILDERS[name](tmp)
        else:
            _BUILDERS[name](tmp, size)
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race, or a stale incomplete dir is in the way
            if not (target / ".complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def list_models(cfg: PipelineConfig) -> list[ModelEntry]:
    out = []
    for name in MODELS:
        spec = getattr(cfg.models, name)
        if spec in SIZES:
            p = tiny_dir(name, cfg.cache_dir(), spec)
            out.append(ModelEntry(name, spec, p, spec, (p / ".complete").exists(), _dir_size(p)))
        else:
            p = Path(spec).expanduser()
            ok = (p / "config.json").exists() or (p / "model_index.json").exists()
            out.append(ModelEntry(name, spec, p, "path", ok, _dir_size(p)))
    return out


# ---------------------------------------------------------------- tokenizers

def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 / CLIP reversible byte → printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_clip_tokenizer(out: Path) -> None:
    """CLIP-style BPE files (byte alphabet, end-of-word forms, merges for the corpus words)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _words():
        word = "".join(ch for ch in word if ord(ch) < 128)
        if len(word) < 2:
            continue
        cur = word[0]
        for i, ch in enumerate(word[1:], start=1):
            nxt = ch + ("</w>" if i == len(word) - 1 else "")
            merge = (cur, nxt)
            cur += nxt
            if cur not in vocab:
                vocab[cur] = len(vocab)
                merges.append(merge)
    # the end-of-text id must be the largest: CLIP pools at the argmax id in some configs
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tok.save_pretrained(out)


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]

QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-VL's chat layout (roles between im_start/im_end, an image as vision_start, image_pad,
vision_end), written for the tiny twin; real checkpoints bring their own template."""


def write_qwen_tokenizer(out: Path, vocab_size: int = 1024) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([_CORPUS] * 20 + [" ".join(_words())] * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  model_max_length=8192, padding_side="left")
    tok.chat_template = QWEN_CHAT_TEMPLATE
    tok.save_pretrained(out)
    return len(tok)


# ---------------------------------------------------------------- twin builders

DIMS = {
    "tiny": dict(
        lmm=dict(hidden=64, inter=128, layers=2, heads=4, kv=2, mrope=[2, 3, 3], vis_depth=2, vis_embed=32),
        text_enc=dict(hidden=32, inter=37, layers=2), unet=dict(blocks=(32, 64), layers=1, heads=(2, 4),
                                                                 tlayers=(1, 1)),
        vae=(16, 32), clip=dict(hidden=32, inter=37, layers=2, image=32, patch=8, proj=32),
        # vLLM's CPU attention kernel needs a text head size that is a multiple of 32 (>= 32)
        idefics3=dict(hidden=128, inter=256, layers=2, heads=4, kv=2, vis_hidden=64, vis_inter=128, vis_layers=2)),
    "small": dict(
        lmm=dict(hidden=256, inter=688, layers=4, heads=8, kv=4, mrope=[4, 6, 6], vis_depth=2, vis_embed=64),
        text_enc=dict(hidden=64, inter=128, layers=3), unet=dict(blocks=(64, 128), layers=2, heads=(4, 8),
                                                                  tlayers=(1, 2)),
        vae=(32, 64), clip=dict(hidden=64, inter=128, layers=3, image=64, patch=8, proj=64),
        idefics3=dict(hidden=256, inter=688, layers=4, heads=8, kv=4, vis_hidden=64, vis_inter=128, vis_layers=2)),
}
"""Model dimensions per twin size (tiny is the default profile's and the tests')."""

def _seeded(seed: int):
    import torch

    torch.manual_seed(seed)


def build_tiny_lmm(out: Path, size: str = "tiny") -> None:
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    n = write_qwen_tokenizer(out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    vocab = ((n + 63) // 64) * 64  # padded like real checkpoints
    d = DIMS[size]["lmm"]
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=d["hidden"], intermediate_size=d["inter"],
                         num_hidden_layers=d["layers"], num_attention_heads=d["heads"],
                         num_key_value_heads=d["kv"], max_position_embeddings=8192,
                         # mrope sections sum to head_dim / 2
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": d["mrope"]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=d["vis_depth"], embed_dim=d["vis_embed"], hidden_size=d["hidden"], num_heads=4,
                           mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    _seeded(0)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(out)
    del torch


IDEFICS3_SPECIALS = (["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
                     + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])
"""The tokens Idefics3's processor looks up (image wrapper, image placeholder, tile tags)."""


def build_tiny_idefics3(out: Path, size: str = "tiny") -> None:
    """The VL twin for vLLM on CPU: Idefics3 (a Llama text tower, a small SigLIP-style vision tower,
    a PIL image processor: no torchvision), with the Qwen twin's tokenizer and chat layout. One
    56-pixel image, no tiling: 4 image tokens after the pixel-shuffle connector (scale 2)."""
    from transformers import (AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3ImageProcessorPil, Idefics3Processor)

    write_qwen_tokenizer(out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_special_tokens({"additional_special_tokens": IDEFICS3_SPECIALS})
    tok.chat_template = QWEN_CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>")
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS + IDEFICS3_SPECIALS}
    d = DIMS[size]["idefics3"]
    image, patch, scale = 56, 14, 2
    cfg = Idefics3Config(
        text_config=dict(model_type="llama", vocab_size=((len(tok) + 63) // 64) * 64, hidden_size=d["hidden"],
                         intermediate_size=d["inter"], num_hidden_layers=d["layers"],
                         num_attention_heads=d["heads"], num_key_value_heads=d["kv"],
                         max_position_embeddings=8192, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(hidden_size=d["vis_hidden"], intermediate_size=d["vis_inter"],
                           num_hidden_layers=d["vis_layers"], num_attention_heads=2, image_size=image,
                           patch_size=patch),
        scale_factor=scale, image_token_id=ids["<image>"], pad_token_id=ids["<|endoftext|>"])
    _seeded(21)
    model = Idefics3ForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(out)
    proc = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": image},
                                     max_image_size={"longest_edge": image})
    Idefics3Processor(proc, tok, image_seq_len=(image // patch) ** 2 // scale**2,
                      chat_template=tok.chat_template).save_pretrained(out)
    tok.save_pretrained(out)


def _tiny_text_encoder(cls, vocab: int, eos: int, seed: int, size: str = "tiny"):
    from transformers import CLIPTextConfig

    d = DIMS[size]["text_enc"]
    _seeded(seed)
    return cls(CLIPTextConfig(vocab_size=vocab, hidden_size=d["hidden"], intermediate_size=d["inter"],
                              num_hidden_layers=d["layers"], num_attention_heads=4, projection_dim=d["hidden"],
                              max_position_embeddings=77,
                              bos_token_id=eos - 1, eos_token_id=eos, pad_token_id=eos, hidden_act="gelu"))


def _tiny_unet(seed: int, cross_dim: int, add_dim: int, size: str = "tiny"):
    from diffusers import UNet2DConditionModel

    d = DIMS[size]["unet"]
    _seeded(seed)
    return UNet2DConditionModel(
        block_out_channels=d["blocks"], layers_per_block=d["layers"], sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=d["heads"], use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=d["tlayers"],
        projection_class_embeddings_input_dim=add_dim, cross_attention_dim=cross_dim, norm_num_groups=8,
    )


def _tiny_sdxl_parts(out: Path, size: str = "tiny"):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler
    from transformers import CLIPTokenizer

    write_clip_tokenizer(out / "_tok")
    tok = CLIPTokenizer.from_pretrained(out / "_tok")
    shutil.rmtree(out / "_tok")
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    _seeded(1)
    vae = AutoencoderKL(block_out_channels=DIMS[size]["vae"], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=64)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading")
    return tok, eos, len(tok), vae, sched


def build_tiny_sdxl_base(out: Path, size: str = "tiny") -> None:
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok, eos, vocab, vae, sched = _tiny_sdxl_parts(out, size)
    te1 = _tiny_text_encoder(CLIPTextModel, vocab, eos, 2, size)
    te2 = _tiny_text_encoder(CLIPTextModelWithProjection, vocab, eos, 3, size)
    w = DIMS[size]["text_enc"]["hidden"]
    # text_time embedding input: 6 time ids × 8 + pooled text (w); cross-attention: both encoders (w + w)
    unet = _tiny_unet(4, cross_dim=2 * w, add_dim=6 * 8 + w, size=size)
    StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                              unet=unet, scheduler=sched).save_pretrained(out)


def build_tiny_sdxl_refiner(out: Path, size: str = "tiny") -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection

    tok, eos, vocab, vae, sched = _tiny_sdxl_parts(out, size)
    te2 = _tiny_text_encoder(CLIPTextModelWithProjection, vocab, eos, 5, size)
    w = DIMS[size]["text_enc"]["hidden"]
    # the refiner conditions on an aesthetic score instead of the target size: 5 time ids × 8 + w
    unet = _tiny_unet(6, cross_dim=w, add_dim=5 * 8 + w, size=size)
    StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=te2,
                                     tokenizer_2=tok, unet=unet, scheduler=sched,
                                     requires_aesthetics_score=True).save_pretrained(out)


def build_tiny_clip(out: Path, size: str = "tiny", seed: int = 7) -> None:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    write_clip_tokenizer(out)
    tok = CLIPTokenizer.from_pretrained(out)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    d = DIMS[size]["clip"]
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=d["hidden"], intermediate_size=d["inter"],
                         num_hidden_layers=d["layers"], num_attention_heads=4, max_position_embeddings=77,
                         bos_token_id=eos - 1, eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(image_size=d["image"], patch_size=d["patch"], hidden_size=d["hidden"],
                           intermediate_size=d["inter"], num_hidden_layers=d["layers"], num_attention_heads=4),
        projection_dim=d["proj"],
    )
    _seeded(seed)
    CLIPModel(cfg).save_pretrained(out)
    px = d["image"]
    CLIPImageProcessorPil(size={"shortest_edge": px}, crop_size={"height": px, "width": px}).save_pretrained(out)


def build_tiny_med_clip(out: Path) -> None:
    """The CLIP twin with other weights: a medical scorer is a different model in the same layout."""
    build_tiny_clip(out, seed=17)


def build_tiny_cheff(out: Path) -> None:
    from kbridge.engine.generate.cheff_tiny import build_tiny_cheff as build

    build(out, _words())


def write_bert_tokenizer(out: Path, max_length: int) -> None:
    """A BERT WordPiece vocab.txt: specials, the corpus words, and every ASCII character alone and
    as a '##' continuation, so any text tokenises without [UNK] floods."""
    from transformers import BertTokenizer

    chars = [chr(c) for c in range(33, 127)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    vocab += [w for w in _words() if w not in set(vocab) and w.isascii()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(out / "vocab.txt"), model_max_length=max_length).save_pretrained(out)


def build_tiny_mire(out: Path) -> None:
    from kbridge.engine.mire.checkpoint import build_tiny

    build_tiny(out)


def build_tiny_blip(out: Path) -> None:
    """BlipForImageTextRetrieval (vision ViT, BERT text encoder with cross-attention, ITC
    projections, ITM head) at width 32; text positions capped at 40 so truncation is exercised."""
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessorPil

    write_bert_tokenizer(out, max_length=40)
    tok = BertTokenizer.from_pretrained(out)
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=40, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        image_text_hidden_size=32,
    )
    _seeded(11)
    BlipForImageTextRetrieval(cfg).save_pretrained(out)
    BlipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)


_BUILDERS = {"lmm": build_tiny_lmm, "lmm_vllm_cpu": build_tiny_idefics3, "sdxl_base": build_tiny_sdxl_base,
             "sdxl_refiner": build_tiny_sdxl_refiner, "clip": build_tiny_clip, "blip": build_tiny_blip,
             "cheff": build_tiny_cheff, "med_clip": build_tiny_med_clip, "mire": build_tiny_mire}
