"""Architecture facts (REFERENCE.md §1–3): parameter counts, token counts, the flag, the zeroing
convention, the missing-input convention, the dynamic-query rebuild."""
from __future__ import annotations

import hashlib

import pytest
import torch

from kbridge.engine.peers.classify.config import full_config
from kbridge.engine.peers.classify.model import build_meta, load, load_tokenizer, parameter_counts


@pytest.mark.parametrize("kind,task,expect", [
    # DCP: 5,815,552 trainable without the head, 5,839,127 with the MM-IMDb head, 155,064,088 in all
    ("dcp", "mmimdb", dict(trainable_without_head=5_815_552, trainable=5_839_127, total=155_064_088,
                           learner=2_006_784)),
    # REP on MM-IMDb trains only the memory learner (17,935,617) and the head; 170,992,921 in all
    ("rep", "mmimdb", dict(trainable_without_head=17_935_617, trainable=17_935_617 + 23 * 1024 + 23,
                           total=170_992_921, learner=17_935_617)),
])
def test_full_size_parameter_counts(kind, task, expect):
    c = parameter_counts(build_meta(full_config(kind, task)))
    assert {k: c[k] for k in expect} == expect


def test_rep_hatememes_trains_the_dcp_set_too():
    c = parameter_counts(build_meta(full_config("rep", "hatememes")))
    # memory learner + both block-0 attentions (2,362,368 + 1,050,624) + ln_post + ln_final + proj
    assert c["trainable_without_head"] == 17_935_617 + 2_362_368 + 1_050_624 + 1_536 + 1_024 + 393_216


def test_full_size_token_counts_on_meta():
    """Every vision block sees 233 tokens (36 prompts + 197) and every text block 113 (36 + 77)."""
    m = build_meta(full_config("dcp"))
    seen = {"vision": [], "text": []}
    for tower, layers in (("vision", m.backbone.clip.vision_model.encoder.layers),
                          ("text", m.backbone.clip.text_model.encoder.layers)):
        for layer in layers:
            layer.register_forward_pre_hook(lambda mod, a, t=tower: seen[t].append(a[0].shape[1]))
    with torch.device("meta"):
        out = m(torch.randn(2, 3, 224, 224), torch.zeros(2, 77, dtype=torch.long), torch.tensor([0, 2]))
    assert out.shape == (2, 23)
    assert seen == {"vision": [233] * 12, "text": [113] * 12}


# sha256[:16] of the float32 bytes, sum, first four values (REFERENCE.md §1.5)
CHECK = [
    ("vision", 0, "6913a8943d097ba5", 2.994074, [-0.014540, -0.023182, 0.035324, -0.020827]),
    ("vision", 1, "8d7ab7b7ec220494", 0.577017, [-0.017907, 0.007182, -0.004025, 0.017743]),
    ("vision", 2, "75e85006698002a6", 0.249041, [0.022956, 0.025111, 0.007263, 0.020968]),
    ("text", 0, "937ef5b13b31eb2e", -0.173489, [0.029334, 0.004051, -0.006728, -0.019184]),
    ("text", 1, "e7dab0372737926f", 1.700009, [-0.012266, 0.011090, 0.000055, -0.010624]),
    ("text", 2, "115368850bb43ad5", 2.763809, [-0.019490, -0.003811, 0.012663, -0.004902]),
]


def test_dynamic_queries_rebuild_matches_reference_check_values():
    from kbridge.engine.peers.classify.clip_backbone import rebuild_dynamic_queries

    before = torch.random.get_rng_state()
    vision, text = rebuild_dynamic_queries(full_config("dcp"))
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    assert vision.shape == (3, 12, 768) and text.shape == (3, 12, 512)
    for tower, i, sha, total, first in CHECK:
        t = (vision if tower == "vision" else text)[i][:, None].contiguous()   # the reference's (12, 1, d)
        assert hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16] == sha, (tower, i)
        assert float(t.sum()) == pytest.approx(total, abs=5e-6)
        assert t.flatten()[:4].tolist() == pytest.approx(first, abs=5e-7)


@pytest.fixture(scope="module")
def tiny(tiny_dcp):
    return load(tiny_dcp), load_tokenizer(tiny_dcp)


def _inputs(b: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 1000, (b, 77), generator=g)
    ids[:, 20] = 1059       # EOT (the largest id)
    ids[:, 21:] = 0
    return torch.randn(b, 3, 32, 32, generator=g), ids


@torch.no_grad()
def test_flag_changes_output_and_rows_are_independent(tiny):
    m, _ = tiny
    px, ids = _inputs(3, 0)
    outs = [m(px, ids, torch.full((3,), f)) for f in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert (outs[a] - outs[b]).abs().max() > 1e-4
    mixed = m(px, ids, torch.tensor([0, 1, 2]))
    for row in range(3):  # a row's logits do not depend on the other rows' flags
        torch.testing.assert_close(mixed[row], outs[row][row], atol=1e-6, rtol=0)


@torch.no_grad()
def test_missing_half_is_zeroed(tiny):
    """Flag 1 zeroes the text half (the text input cannot matter), flag 2 the image half."""
    m, _ = tiny
    px, ids = _inputs(2, 1)
    px2, ids2 = _inputs(2, 2)
    f1, f2, f0 = (torch.full((2,), v) for v in (1, 2, 0))
    torch.testing.assert_close(m(px, ids, f1), m(px, ids2, f1), atol=0, rtol=0)
    torch.testing.assert_close(m(px, ids, f2), m(px2, ids, f2), atol=0, rtol=0)
    assert (m(px, ids, f0) - m(px, ids2, f0)).abs().max() > 1e-5
    assert (m(px, ids, f0) - m(px2, ids, f0)).abs().max() > 1e-5


def test_missing_inputs_follow_the_reference_convention(tiny):
    """Missing text → '' ([SOT, EOT, 0, ...]); missing image → all ones after normalisation."""
    from PIL import Image

    from kbridge.engine.peers.classify.data import Example, batch_inputs

    m, tok = tiny
    img = Image.new("RGB", (50, 40), (10, 200, 30))
    exs = [Example("s:0", 0, "a red cat", img, None, ()), Example("s:1", 1, "a red cat", img, "text", ()),
           Example("s:2", 2, "a red cat", img, "image", ())]
    x = batch_inputs(exs, tok, m.cfg)
    assert x["missing_type"].tolist() == [0, 1, 2]
    sot, eot = tok.convert_tokens_to_ids("<|startoftext|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert x["input_ids"][1, :3].tolist() == [sot, eot, 0] and int(x["input_ids"][1].count_nonzero()) == 2
    assert x["input_ids"][2].tolist() == x["input_ids"][0].tolist()
    assert torch.equal(x["pixel_values"][2], torch.ones(3, 32, 32))
    assert torch.equal(x["pixel_values"][1], x["pixel_values"][0])
    # CLIP normalisation of a solid colour: (v/255 - mean) / std per channel
    assert float(x["pixel_values"][0, 1, 5, 5]) == pytest.approx((200 / 255 - 0.4578275) / 0.26130258, abs=1e-5)


def test_long_text_is_truncated_with_eot_last(tiny):
    from kbridge.engine.peers.classify.data import encode_texts

    _, tok = tiny
    ids = encode_texts(tok, ["cat " * 200], 77)
    assert ids.shape == (1, 77) and int(ids[0, -1]) == tok.convert_tokens_to_ids("<|endoftext|>")


def test_tiny_twin_is_deterministic(tiny_dcp, tmp_path):
    from safetensors.torch import load_file

    from kbridge.engine.peers.classify.model import build_tiny

    build_tiny(tmp_path / "again", "dcp", "mmimdb")
    a, b = load_file(str(tiny_dcp / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
