"""MIRe encoders: parameter counts against the reference figures, the token layout, the fusion-free
property, and the two fixed reference bugs (pad leak, train / inference masks)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from kbridge.engine.retrieve.mire.checkpoint import full_size_config, meta_model, published_state, resolve
from kbridge.engine.retrieve.mire.model import MireModel, TextGuidedPooling


def _count(m) -> int:
    return sum(p.numel() for p in m.parameters())


def test_pooling_module_has_the_reference_parameter_count():
    with torch.device("meta"):
        pool = TextGuidedPooling(v_dim=768, dim=128, num_tokens=16, num_heads=12)
    assert _count(pool) == 14_704_512  # REFERENCE.md §5.1, measured on the reference module


def test_full_size_architecture_on_the_meta_device():
    m = meta_model(full_size_config())
    # bert-base-uncased is 109,482,240 parameters with its pooler (768² + 768), which ColBERT never uses
    assert _count(m.model.bert) == 109_482_240 - 590_592
    assert _count(m.model.linear) == 768 * 128
    # CLIP ViT-B/32's visual tower is 87,849,216 with its 768 × 512 projection, which MIRe does not use
    assert _count(m.vision_tower) == 87_849_216 - 768 * 512
    assert _count(m.query_fusion) == 14_704_512
    keys = published_state(m).keys()
    assert "model.linear.weight" in keys and "query_fusion.split_mlp.2.weight" in keys
    assert "vision_tower.vision_tower.vision_model.encoder.layers.11.mlp.fc2.weight" in keys


@pytest.fixture(scope="module")
def enc(cfg):
    return resolve("tiny", cfg.cache_dir())


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_query_layout_is_28_visual_plus_text_tokens_of_unit_length(enc):
    bags = enc.encode_queries(["a cat on a table", "red car"], _images(2))
    c = enc.model.cfg
    assert all(b.shape == (c.num_tokens + c.num_heads + c.query_maxlen, c.dim) for b in bags)
    for b in bags:
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    text_only = enc.encode_queries(["a cat on a table"])
    assert text_only[0].shape == (c.query_maxlen, c.dim)
    np.testing.assert_allclose(text_only[0], bags[0][28:], atol=1e-6)  # the text tokens never see the image


def test_no_feedback_from_text_into_vision(enc):
    ids, mask = enc.query_ids(["a dog in the park", "an astronaut with a flag"])
    px = enc.pixels(_images(1) * 2)
    with torch.no_grad():
        q, _ = enc.model.query(ids, mask, px)
        v = enc.model.vision(px)
    # same image, different texts: identical global tokens and identical CLIP features …
    torch.testing.assert_close(q[0, :16], q[1, :16], rtol=0, atol=0)
    torch.testing.assert_close(v[0], v[1], rtol=0, atol=0)
    # … while the text-guided pooled tokens follow the text
    assert (q[0, 16:28] - q[1, 16:28]).abs().max() > 1e-3


def _pool_inputs(seed=0, b=2, n_valid=5, n_pad=7, dim=32, v_dim=64, s=16):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(b, n_valid + n_pad, dim, generator=g)
    mask = torch.zeros(b, n_valid + n_pad)
    mask[:, :n_valid] = 1
    t = t * mask[..., None]  # the reference zeroes masked text rows before pooling
    v = torch.randn(b, 1 + s, v_dim, generator=g)
    return t, mask, v


def test_pad_rows_do_not_leak_into_pooled_tokens():
    torch.manual_seed(0)
    pool = TextGuidedPooling(64, 32, 16, 12).eval()
    t, mask, v = _pool_inputs()
    with torch.no_grad():
        fixed = pool.pooled_tokens(t, mask, v)
        unpadded = pool.pooled_tokens(t[:, :5], mask[:, :5], v)
        leaky = pool.pooled_tokens(t, mask, v, pad_leak=True)
        # the reference's arithmetic: each masked row gets a uniform softmax and adds mean(values)
        kv = pool.proj(v[:, 1:])
        val = pool.v_state(kv).view(2, 16, 12, 32).transpose(1, 2)  # [B, H, S, dim]
        k = pool.k_state(kv).view(2, 16, 12, 32).transpose(1, 2)
        w = (torch.einsum("bld,bhsd->bhls", t[:, :5], k) / 32 ** 0.5).softmax(-1)
        summed = (w @ val).sum(2) + 7 * val.mean(2)
        expect_leak = pool.o_proj(summed / 5)
    torch.testing.assert_close(fixed, unpadded, atol=1e-6, rtol=0)
    torch.testing.assert_close(leaky, expect_leak, atol=1e-5, rtol=1e-5)
    assert (leaky - fixed).abs().max() > 1e-2


def test_queries_are_encoded_at_inference_as_in_training(enc):
    """Default config: [MASK] padding attended and kept, every position valid (training's collate)."""
    texts = ["a cat", "the brick wall behind the wooden table"]
    ids, mask = enc.query_ids(texts)
    assert bool((mask == 1).all()) and ids.shape[1] == 32
    assert int((ids == enc.tokenizer.mask_token_id).sum()) > 0
    px = enc.pixels(_images(2))
    with torch.no_grad():
        q_train, _ = enc.model.query(ids, torch.ones_like(ids), px)
    bags = enc.encode_queries(texts, _images(2))
    for i in range(2):
        np.testing.assert_allclose(bags[i], q_train[i].numpy(), atol=1e-6)


def test_reference_inference_masks_and_the_leak_fix_end_to_end(enc):
    """With the reference's inference masks ([MASK] padding masked out), our pooled tokens equal those
    of the query truncated to its real tokens; the reference's (pad_leak) do not."""
    ref_cfg = dataclasses.replace(enc.model.cfg, attend_to_mask_tokens=False)
    model = MireModel(ref_cfg)
    model.load_state_dict(enc.model.state_dict())
    enc_ref = dataclasses.replace(enc, model=model.eval())
    ids, mask = enc_ref.query_ids(["a small dog"])
    n = int(mask.sum())
    assert n < ids.shape[1] and bool((ids[0, n:] == enc.tokenizer.mask_token_id).all())
    px = enc.pixels(_images(1))
    with torch.no_grad():
        q, valid = model.query(ids, mask, px)
        q_short, _ = model.query(ids[:, :n], mask[:, :n], px)
        q_leak, _ = model.query(ids, mask, px, pad_leak=True)
    assert int(valid.sum()) == 28 + n
    torch.testing.assert_close(q[0, :28 + n], q_short[0], atol=1e-5, rtol=0)
    assert (q_leak[0, 16:28] - q[0, 16:28]).abs().max() > 1e-3
    assert len(enc_ref.encode_queries(["a small dog"], _images(1))[0]) == 28 + n


def test_documents_drop_padding_and_punctuation(enc):
    ids, att, keep = enc.doc_ids(["a cat, on a mat.", "dog"])
    assert ids[0, 1] == enc.tokenizer.convert_tokens_to_ids("[unused1]")
    punct = {enc.tokenizer.convert_tokens_to_ids(c) for c in ",."}
    assert all(int(keep[0, j]) == 0 for j in range(ids.shape[1]) if int(ids[0, j]) in punct)
    bags = enc.encode_docs(["a cat, on a mat.", "dog"])
    assert [len(b) for b in bags] == [int(keep[0].sum()), int(keep[1].sum())]
    assert int(att[1].sum()) == 4 and len(bags[1]) == 4  # [CLS] [D] dog [SEP]
    np.testing.assert_allclose(np.linalg.norm(bags[0], axis=1), 1.0, atol=1e-5)
    img_docs = enc.encode_image_docs(_images(3))
    assert all(b.shape == (28, enc.dim) for b in img_docs)
