"""DiCMoR's text encoder: a (frozen) Hugging Face BERT over MMSA's ``text_bert`` ids, and the twins.

``text_bert`` is [N, 3, T]: token ids, attention mask and segment ids per sample; BERT's last hidden
state [N, T, H] is the text feature (H = 768 for bert-base-uncased). The reference runs BERT under
``no_grad``; its fine-tuned weights, if any, sit in the checkpoint as ``text_model.model.*``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from kbridge.engine.errors import KbridgeError


_IGNORED = {"embeddings.position_ids"}  # saved by transformers < 4.31 only (REFERENCE.md §4.5)


class TextEncoderError(KbridgeError):
    """The BERT directory or weights do not fit the DiCMoR model."""


def _quiet() -> None:
    """No transformers progress bars: stderr carries only kbridge's own lines."""
    import transformers

    transformers.utils.logging.disable_progress_bar()


BERT_BASE_VOCAB = 30522
"""bert-base-uncased's vocabulary size: MMSA's ``text_bert`` ids range over it."""


def tiny_bert(out: Path, hidden: int = 32, seed: int = 23, vocab_size: int = BERT_BASE_VOCAB):
    """A two-layer BERT twin with the twins' WordPiece tokenizer (engine/twins.py), written to ``out``. Its embedding
    table has bert-base's 30,522 rows (not just the tokenizer's words), so MMSA pickles, whose
    ``text_bert`` holds bert-base ids, run on the twin as they are."""
    from transformers import BertConfig, BertModel

    _quiet()

    from kbridge.engine.twins import write_bert_tokenizer

    write_bert_tokenizer(out, max_length=64)
    vocab = max(vocab_size, len((out / "vocab.txt").read_text().splitlines()))
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=64)
    torch.manual_seed(seed)
    model = BertModel(cfg)
    model.save_pretrained(out)
    return model


def write_bert(out: Path, src: Path | str, state: dict[str, torch.Tensor] | None, width: int) -> Path:
    """Write ``out`` (a BERT directory) from ``src`` (a local BERT directory, or "tiny"), with the
    checkpoint's BERT ``state`` loaded over it when given. Checks the hidden size is ``width``."""
    from transformers import BertConfig, BertModel

    _quiet()
    out = Path(out)
    if str(src) == "tiny":
        model = tiny_bert(out, hidden=width)
    else:
        src = Path(src)
        if not (src / "config.json").exists():
            raise TextEncoderError(f"{src}: not a BERT directory (no config.json)")
        cfg = BertConfig.from_pretrained(src)
        has_weights = any((src / f).exists() for f in ("model.safetensors", "pytorch_model.bin"))
        model = BertModel.from_pretrained(src) if has_weights and state is None else BertModel(cfg)
        if state is None and not has_weights:
            raise TextEncoderError(f"{src}: no BERT weights there and none in the checkpoint")
        out.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():  # tokenizer files travel with the weights
            if f.name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                shutil.copy(f, out / f.name)
    if model.config.hidden_size != width:
        raise TextEncoderError(f"BERT hidden size {model.config.hidden_size} != the model's text width {width}")
    if state is not None:
        state = {k: v for k, v in state.items() if k not in _IGNORED}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in _IGNORED]
        if missing or unexpected:
            raise TextEncoderError(f"checkpoint BERT does not match the config: missing {missing[:3]}, "
                                   f"unexpected {unexpected[:3]}")
    model.save_pretrained(out)
    return out


def load_bert(path: Path):
    from transformers import BertModel

    _quiet()

    try:
        return BertModel.from_pretrained(Path(path)).eval()
    except (OSError, ValueError) as e:
        raise TextEncoderError(f"{path}: cannot load BERT: {str(e).splitlines()[0][:200]}") from None


def check_ids(bert, text_bert: np.ndarray, ids: list, source: str) -> None:
    """Every token id inside BERT's vocabulary (else one line naming the first sample and id)."""
    vocab = bert.config.vocab_size
    tok = np.asarray(text_bert)[:, 0]
    bad = np.nonzero((tok < 0) | (tok >= vocab))[0]
    if len(bad):
        i = int(bad[0])
        worst = int(tok[i][(tok[i] < 0) | (tok[i] >= vocab)][0])
        raise TextEncoderError(f"{source}: sample {ids[i]}: text_bert token id {worst} is outside the model's BERT "
                               f"vocabulary of {vocab} ({len(set(bad.tolist()))} samples affected); the pickle was "
                               f"tokenized for another BERT")


@torch.no_grad()
def encode(bert, text_bert: np.ndarray, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """text_bert [N, 3, T] (ids, mask, segments) → last hidden states [N, T, H] float32."""
    outs = []
    bert.to(device)
    for i in range(0, len(text_bert), batch_size):
        t = torch.as_tensor(np.asarray(text_bert[i:i + batch_size]), dtype=torch.long).to(device)
        h = bert(input_ids=t[:, 0], attention_mask=t[:, 1], token_type_ids=t[:, 2]).last_hidden_state
        outs.append(h.float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, text_bert.shape[-1], bert.config.hidden_size), np.float32)
