"""User text never injects the LMM's special tokens: every special / added token of the tiny
Qwen2-VL twin's tokenizer, and the chat markers of Idefics3 and ChatML for a backend whose
tokenizer is remote (HTTP), is tokenized as plain text; a text carrying the image placeholder
is answered like any other text beside an image request in the same hf batch (it must not hang
the backend)."""
from __future__ import annotations

import asyncio

import pytest

from kbridge.engine.lmm import LMMClient, Request, RequestLog
from kbridge.engine.lmm.special import JOINER, neutralise, neutralise_messages, pattern_for, special_tokens
from kbridge.engine.twins import QWEN_SPECIALS

IDEFICS3 = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<row_1_col_1>",
            "<row_4_col_3>"]


@pytest.fixture(scope="module")
def tok(engine):
    return engine.models().lmm.tok


def test_the_twin_tokenizer_s_own_special_tokens_are_found(tok):
    assert set(QWEN_SPECIALS) <= set(special_tokens(tok))


@pytest.mark.parametrize("token", QWEN_SPECIALS)
def test_each_qwen_special_token_is_plain_text(tok, engine, token):
    backend = engine.models().lmm
    special_ids = set(tok.all_special_ids) | {tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = f"a dog {token} runs{token}{token[:-1]}{token}"
    for pattern in (pattern_for(backend), pattern_for(object())):  # hf's own tokenizer; HTTP (generic)
        safe = neutralise(text, pattern)
        assert safe.replace(JOINER, "") == text  # the text reads the same
        ids = tok(safe, add_special_tokens=False)["input_ids"]
        assert not special_ids & set(ids), (token, safe)
        # rendered through the chat template, the prompt holds exactly the template's own markers
        msgs = [{"role": "user", "content": [{"type": "text", "text": safe}]}]
        ref = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
        got = tok.apply_chat_template(neutralise_messages(msgs, pattern), tokenize=False)
        want = tok.apply_chat_template(ref, tokenize=False)
        assert got.count(token) == want.count(token)


@pytest.mark.parametrize("token", IDEFICS3 + ["<|eot_id|>", "<s>", "</s>", "[INST]"])
def test_idefics3_and_chat_markers_are_neutralised_without_a_tokenizer(token):
    safe = neutralise(f"look {token} here {token}", pattern_for(object()))
    assert token not in safe and safe.replace(JOINER, "") == f"look {token} here {token}"


def test_overlapping_tokens_leave_none_whole():
    import re

    pattern = re.compile("ab|bc")
    assert not pattern.search(neutralise("abcbcab", pattern))


def test_the_image_placeholder_in_text_does_not_hang_the_hf_backend(engine):
    """One batch: an image request and a text request whose text carries every special token."""
    from PIL import Image

    backend = engine.models().lmm
    evil = "a dog " + "".join(QWEN_SPECIALS) + " <|image_pad|><|image_pad|>"
    reqs = [Request([{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (56, 56), "red")},
                                                  {"type": "text", "text": "describe"}]}], None, 1, 4, 1.0, "a", "t", 1),
            Request([{"role": "user", "content": [{"type": "text", "text": evil}]}], None, 2, 4, 1.0, "b", "t", 1)]
    client = LMMClient(backend, RequestLog())
    out = asyncio.run(asyncio.wait_for(client.complete(reqs), 120))
    assert [r.error for r in out] == [None, None]


def test_the_run_path_sends_no_special_token(cfg, engine, tmp_path):
    """The run path goes through the same seam: a dataset caption carrying every special token
    reaches the LMM backend broken (checked on every text part of every request sent)."""
    import json

    from PIL import Image

    from tests.helpers.fake_lmm import FakeLMM
    from tests.engine.serve.serve_helpers import serve_engine

    root = tmp_path / "toy"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (20, 16), "blue").save(root / "images" / "ok.png")
    evil = "a blue square " + "".join(QWEN_SPECIALS + IDEFICS3)
    items = [{"file_name": "images/ok.png", "labels": [], "captions": [evil]}]
    (root / "metadata.json").write_text(json.dumps(items))
    (root / "missing.json").write_text(json.dumps({"missing_details": {"0": [1, 0]}}))
    lmm = FakeLMM()
    report = serve_engine(cfg, engine, lmm).run(data=root, fmt="coco", missing=root / "missing.json",
                                                out=tmp_path / "out")
    assert report.completed == 1 and json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])["sample_id"] == "toy:0"
    texts = [p["text"] for r in lmm.requests for m in r.messages for p in m["content"] if p["type"] == "text"]
    assert any("a blue square" in t for t in texts)
    for t in texts:
        assert not any(tok in t for tok in QWEN_SPECIALS + IDEFICS3), t
