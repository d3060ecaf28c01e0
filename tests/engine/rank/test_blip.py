"""BLIP scorer on the tiny twin: ITC and ITM against the model's own forward, truncation, ranges."""
import pytest
import torch

from kbridge.engine.types import Candidate, Sample


@pytest.fixture(scope="module")
def blip(cfg):
    from kbridge.engine import zoo
    from kbridge.engine.rank.blip import BlipScorer

    return BlipScorer(zoo.resolve("blip", cfg), head="itc+itm")


@pytest.fixture(scope="module")
def images():
    from kbridge.engine import data as D

    ds = D.open_dataset(None)
    return [D.load_sample(ds, i, None).image for i in (1, 5)]


LONG = " ".join(["a cat sitting on a red sofa near the window"] * 60)  # far past 40 tokens


def test_itc_equals_the_models_retrieval_forward(blip, images):
    texts = ["a red cup on a table", "a brick wall"]
    enc = blip.tok(texts, padding=True, return_tensors="pt")
    px = blip.improc(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        ref = torch.stack([blip.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                      pixel_values=px[i:i + 1], use_itm_head=False).itm_score[0]
                           for i in range(2)])  # [image, text] cosine
    ours = blip.embed_images(images) @ blip.embed_texts(texts).T
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_itm_equals_the_models_matching_head(blip, images):
    texts = ["a red cup on a table", "a brick wall"]
    got = blip.itm(texts, images, [(0, 0), (1, 0), (1, 1)])
    for (t, m), g in zip([(0, 0), (1, 0), (1, 1)], got):
        enc = blip.tok([texts[t]], return_tensors="pt")
        px = blip.improc(images=[images[m]], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            logits = blip.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                pixel_values=px, use_itm_head=True).itm_score
        assert g == pytest.approx(logits.softmax(-1)[0, 1].item(), abs=1e-5)


def test_long_texts_are_truncated_and_scores_in_unit_interval(blip, images):
    assert blip.max_len == 40
    assert blip.embed_texts([LONG]).shape == (1, 32)
    s_txt = Sample("d:0", 0, None, images[0], "text")
    s_img = Sample("d:1", 1, LONG, None, "image")
    cands = [[Candidate("c0", "generated", text=LONG), Candidate("c1", "generated", text="a cup")],
             [Candidate("c0", "generated", image=images[0]), Candidate("c1", "generated", image=images[1])]]
    for head in ("itc", "itm", "itc+itm"):
        blip.head = head
        out = blip.pair_scores([s_txt, s_img], cands)
        assert [len(o) for o in out] == [2, 2]
        assert all(0.0 <= v <= 1.0 for o in out for v in o)
    blip.head = "itc+itm"
    both = blip.pair_scores([s_txt, s_img], cands)
    blip.head = "itc"
    itc = blip.pair_scores([s_txt, s_img], cands)
    blip.head = "itm"
    itm = blip.pair_scores([s_txt, s_img], cands)
    blip.head = "itc+itm"
    for b, c, m in zip(both, itc, itm):
        assert b == pytest.approx([(x + y) / 2 for x, y in zip(c, m)], abs=1e-6)


def test_clip_plus_blip_is_the_mean(cfg, blip, images):
    from kbridge.engine.models import load_scorer
    from kbridge.engine.rank.semantic import MeanScorer, pair_scores

    clip = load_scorer(cfg)
    both = MeanScorer([clip, blip])
    s = Sample("d:0", 0, None, images[0], "text")
    cands = [[Candidate("c0", "generated", text="a cup"), Candidate("c1", "generated", text="a wall")]]
    a, b, m = pair_scores(clip, [s], cands), pair_scores(blip, [s], cands), pair_scores(both, [s], cands)
    assert m[0] == pytest.approx([(x + y) / 2 for x, y in zip(a[0], b[0])], abs=1e-6)
    torch.testing.assert_close(both.embed_texts(["a cup"]), clip.embed_texts(["a cup"]))


def test_semantic_switch_is_validated():
    from kbridge.engine.config import ConfigError, build_config

    assert build_config("tiny").rank.semantic == "clip"
    with pytest.raises(ConfigError, match="rank.semantic"):
        build_config("tiny", overrides={"rank": {"semantic": "siglip"}})
    with pytest.raises(ConfigError, match="blip_head"):
        build_config("tiny", overrides={"rank": {"blip_head": "both"}})
