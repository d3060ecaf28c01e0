"""Counted work of knowledge extraction: triples are answered as [head, relation, tail] tuples,
which cost fewer generated tokens than keyed objects and give the same records."""
import json

from kbridge.engine.domains.general.knowledge import parse_knowledge
from kbridge.engine.domains.lmm import parse_triples, triple
from kbridge.engine.lmm.grammar import max_chars
from kbridge.engine.domains.general import schemas as S

FACTS = [("red cup", "sitting on", "wooden table"), ("man", "holds", "red cup"), ("Red Cup", "sitting on", "table ")]


def _objects(facts):
    return [{"head": h, "relation": r, "tail": t} for h, r, t in facts]


def test_tuple_and_object_answers_give_identical_records():
    rec_obj = {"objects": [{"name": "cup", "count": 1, "attributes": ["red"]}], "style": "photo",
               "triples": _objects(FACTS)}
    rec_tup = {**rec_obj, "triples": [list(f) for f in FACTS]}
    a, b = parse_knowledge(rec_obj), parse_knowledge(rec_tup)
    assert a == b and a.as_dict() == b.as_dict()
    assert [t.as_dict() for t in parse_triples([list(f) for f in FACTS])] == \
        [t.as_dict() for t in parse_triples(_objects(FACTS))]
    assert a.as_dict()["triples"][0] == {"head": "red cup", "relation": "sitting on", "tail": "wooden table"}


def test_tuple_triples_are_valid_bounded_and_cheaper(cfg):
    import xgrammar as xgr
    from transformers import AutoTokenizer

    from kbridge.engine import zoo

    k = cfg.knowledge
    tok = AutoTokenizer.from_pretrained(zoo.resolve("lmm", cfg))
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
    schema = S.triples(k)
    grammar = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema), any_whitespace=False)
    facts = [FACTS[i % 2] for i in range(k.triples)]
    assert xgr.GrammarMatcher(grammar).accept_string(json.dumps({"triples": [list(f) for f in facts]}))
    assert not xgr.GrammarMatcher(grammar).accept_string(json.dumps({"triples": _objects(facts)}))
    longest = max_chars(triple(k))
    widest = json.dumps(["a" * k.name_chars, "b" * max(8, k.name_chars * 3 // 4), "c" * k.name_chars],
                        separators=(", ", ": "))
    assert longest == len(widest)  # the token cap still covers the longest answer
    # the generated tokens that carry no content: the object form's keys
    n_obj = sum(len(tok(json.dumps(o, separators=(", ", ": ")))["input_ids"]) for o in _objects(FACTS))
    n_tup = sum(len(tok(json.dumps(list(f), separators=(", ", ": ")))["input_ids"]) for f in FACTS)
    assert n_tup < n_obj * 0.8, (n_tup, n_obj)
