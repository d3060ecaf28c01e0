"""The published MIRe checkpoint layout → our directory, and back to the same outputs. Checkpoints
are saved as train_retrieval.py saves them, OmegaConf config included (tests/helpers/publisher_pickles.py)."""
from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from kbridge.engine.retrieve.mire.checkpoint import (CheckpointError, config_from_state, convert_published,
                                            full_size_config, load_dir, meta_model, published_state, read_published,
                                            resolve)
from tests.helpers.publisher_pickles import mire_pth


class Unknown:
    """A class no publisher of ours pickles."""

    def __init__(self, lr):
        self.lr = lr


@pytest.fixture(scope="module")
def enc(cfg):
    return resolve("tiny", cfg.cache_dir())


def _published(enc, path, config=None, drop=None, reshape=None):
    """A checkpoint as MIRe's train_retrieval.py writes it, with the extras older transformers /
    ColBERT's HF model add (position_ids buffers, BERT's pooler)."""
    sd = {k: v.clone() for k, v in published_state(enc.model).items()}
    h = enc.model.cfg.bert["hidden_size"]
    sd["model.bert.embeddings.position_ids"] = torch.arange(192)[None]
    sd["vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    sd["model.bert.pooler.dense.weight"], sd["model.bert.pooler.dense.bias"] = torch.zeros(h, h), torch.zeros(h)
    if drop:
        del sd[drop]
    if reshape:
        sd[reshape] = torch.zeros(3, 3)
    if config is None:
        mire_pth(path, sd)
    else:
        torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 14, "config": config}, path)
    enc.tokenizer.save_pretrained(path.parent)
    (path.parent / "config.json").write_text(json.dumps({"num_attention_heads": 1, "model_type": "bert"}))
    return path


def _outputs(e):
    rng = np.random.default_rng(3)
    ims = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    return e.encode_queries(["a cat", "a red bus on the road"], ims) + e.encode_docs(["a cat, on a mat", "sky"])


def test_round_trip_through_the_published_layout(enc, tmp_path):
    (tmp_path / "ckpt").mkdir()
    ckpt = _published(enc, tmp_path / "ckpt" / "mire_epoch_14.pth")
    out = convert_published(ckpt, tmp_path / "ours")
    back = load_dir(tmp_path / "ours")
    # a converted model carries MIRe's own search settings (lengths capped at the twin's 192 positions)
    assert back.model.cfg == replace(enc.model.cfg, query_maxlen=64, doc_maxlen=192, attend_to_mask_tokens=False,
                                     pad_leak=True)
    back.model.cfg = enc.model.cfg
    for k, v in enc.model.state_dict().items():
        torch.testing.assert_close(back.model.state_dict()[k], v, rtol=0, atol=0)
    for a, b in zip(_outputs(enc), _outputs(back)):
        np.testing.assert_allclose(a, b, rtol=0, atol=0)
    assert (out / "model.safetensors").exists() and (out / "preprocessor_config.json").exists()


def test_the_omegaconf_config_loads_without_omegaconf_and_unknown_classes_need_trust(enc, tmp_path):
    from kbridge.engine.published import load, plain

    (tmp_path / "c").mkdir()
    ckpt = _published(enc, tmp_path / "c" / "mire_epoch_14.pth")
    assert "omegaconf" not in sys.modules
    assert plain(load(ckpt)["config"])["model"] == {"doc_maxlen": 384, "query_maxlen": 64, "n_tokens": [16, 12]}
    assert "query_fusion.k_state.weight" in read_published(ckpt)
    odd = _published(enc, tmp_path / "c" / "odd.pth", config=Unknown(1e-5))
    with pytest.raises(CheckpointError, match=r"refused: it pickles \S*Unknown.*--trust-checkpoint"):
        read_published(odd)
    assert "query_fusion.k_state.weight" in read_published(odd, trust=True)


def test_a_tokenizer_that_is_not_the_checkpoints_is_refused(enc, tmp_path):
    """Without vocab.txt beside the checkpoint transformers builds a 5-token vocabulary (every word
    [UNK]); conversion refuses it in one line and writes nothing."""
    (tmp_path / "c").mkdir()
    ckpt = _published(enc, tmp_path / "c" / "mire_epoch_14.pth")
    for f in ("vocab.txt", "tokenizer.json"):
        (tmp_path / "c" / f).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=r"no BERT tokenizer \(vocab.txt or tokenizer.json\).*--tokenizer DIR"):
        convert_published(ckpt, tmp_path / "o")
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    with pytest.raises(CheckpointError, match=r"has 6 tokens but the checkpoint's word embedding has \d+"):
        convert_published(ckpt, tmp_path / "o", tokenizer_dir=tmp_path / "v")
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_that_does_not_fit_names_the_key(enc, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(CheckpointError, match=r"missing .*query_fusion\.o_proj\.1\.bias"):
        convert_published(_published(enc, tmp_path / "a" / "m.pth", drop="query_fusion.o_proj.1.bias"), tmp_path / "o")
    with pytest.raises(CheckpointError, match=r"wrong shapes: query_fusion\.o_proj\.0\.weight"):
        convert_published(_published(enc, tmp_path / "b" / "m.pth", reshape="query_fusion.o_proj.0.weight"),
                          tmp_path / "o")
    torch.save({"state_dict": {}}, tmp_path / "lightning.ckpt")
    with pytest.raises(CheckpointError, match="'model' state dict"):
        read_published(tmp_path / "lightning.ckpt")


def test_full_size_config_is_recovered_from_the_state_dict_shapes():
    full = full_size_config()
    state = published_state(meta_model(full))
    got = config_from_state(state, {"num_attention_heads": 12})
    assert got.bert == full.bert
    assert got.vision == full.vision
    assert (got.dim, got.num_tokens, got.num_heads) == (128, 16, 12)
