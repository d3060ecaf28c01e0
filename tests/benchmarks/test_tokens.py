"""The token breakdown (benchmarks/tokens.py): each decoded token of a structured answer is
classified by what it carries, and the breakdown accounts for every token ``bench e2e`` counts."""
import json

import pytest

from kbridge.benchmarks import tokens as T
from kbridge.engine.lmm.grammar import obj, words

ANSWER = '{"objects": [{"name": "cup", "count": 2, "attributes": ["red"]}], "style": "photo", "triples": [["cup", "on", "table"]]}'


def test_char_fields_label_keys_structure_and_each_value_s_field():
    lab = T.char_fields(ANSWER)
    assert len(lab) == len(ANSWER)
    at = lambda s, k=0: lab[ANSWER.index(s) + k]  # noqa: E731
    assert at('"objects"') == at("objects") == at(": [") == "key" and at(" [", 1) == ""
    assert at("{") == "" and at("}") == "" and at(", ") == ""
    assert at("cup") == "objects.name" and at("2") == "objects.count" and at("red") == "objects.attributes"
    assert at("photo") == "style" and at('"photo"') == "style" and at("table") == "triples"
    assert T.char_fields('"a b"') == ["value"] * 5


def test_classify_counts_content_keys_framing_and_the_end_token():
    """A hand-made vocabulary makes every token known: ``{"``, ``prompt`` and ``": "`` are forced
    and part of the key, ``}`` forced framing, the words and the closing quote content."""
    import xgrammar as xgr

    vocab = ['{"', "{", "prompt", '": "', '"', "}", "a", " red", " cup", "<eos>", "b"]
    info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, stop_token_ids=[9])
    g = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(obj({"prompt": words(1, 5)})), any_whitespace=False)
    ids = [0, 2, 3, 6, 7, 8, 4, 5, 9]
    t = T.classify(ids, xgr.GrammarMatcher(g), [v.encode() for v in vocab], 9, xgr.allocate_token_bitmask(1, len(vocab)))
    assert t.kinds == {"content": 4, "keys": 3, "framing": 1, "end": 1} and t.total == len(ids)
    assert dict(t.fields) == {"answer:prompt": 4}
    # one allowed token: "prompt" after '{"', "}" after the closing quote, and the end token
    assert t.single == 3
    with pytest.raises(ValueError, match="not admitted"):
        T.classify([0, 6], xgr.GrammarMatcher(g), [v.encode() for v in vocab], 9)


def test_breakdown_accounts_for_every_generated_token_bench_e2e_counts(tmp_path):
    from kbridge.engine.config import build_config

    report = T.measure(build_config("tiny"), 2, tmp_path)
    assert set(report) == {"image", "text"}
    for kind, r in report.items():
        assert r["total"]["total"] == pytest.approx(r["generated_tokens_per_sample"]), kind
        assert r["total"]["content"] > 0 and r["total"]["framing"] > 0 and r["total"]["cut"] == 0
        assert set(r["stages"]) == {"extract", "generate", "rank"}
        assert sum(r["total"]["content_by_field"].values()) == pytest.approx(r["total"]["content"])
    assert "| all |" in T.table(report)
