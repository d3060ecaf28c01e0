"""Counted work of knowledge extraction and writing: triples are answered as [head, relation, tail]
tuples, objects as [name, count, [attributes]] tuples, one prompt or caption of parallel writing
and a candidate's triples as the bare JSON value (no wrapper object per sequence); each costs fewer
generated tokens than the keyed / wrapped form and gives the same records."""
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


# ------------------------------------------------------------ compact answers of the fast path

OBJECTS = [("cup", 2, ["red", "ceramic"]), ("table", 1, []), ("Cup ", 3, ["blue"])]
"""The third repeats the first after normalisation: both forms must drop it alike."""


def _keyed_objects():
    return [{"name": n, "count": c, "attributes": a} for n, c, a in OBJECTS]


def test_tuple_objects_give_the_keyed_form_s_record():
    keyed = {"objects": _keyed_objects(), "style": "photo", "triples": [list(f) for f in FACTS]}
    tupled = {**keyed, "objects": [[n, c, a] for n, c, a in OBJECTS]}
    a, b = parse_knowledge(keyed), parse_knowledge(tupled)
    assert a == b and a.as_dict() == b.as_dict()
    assert a.as_dict()["objects"] == [{"name": "cup", "count": 2, "attributes": ["red", "ceramic"]},
                                      {"name": "table", "count": 1, "attributes": []}]


def test_bare_answers_give_the_wrapped_answers_candidates():
    from kbridge.engine.domains.general.write import caption_item
    from kbridge.engine.domains.lmm import text_candidates

    texts = ["a red cup on a wooden table", "A  red cup on a wooden table ", "a man holds a red cup"]
    wrapped = text_candidates([{"text": t} for t in texts])
    assert text_candidates([caption_item(t) for t in texts]) == wrapped and len(wrapped) == 2
    with_facts = [{"text": t, "triples": [list(FACTS[i % 2])]} for i, t in enumerate(texts)]
    assert text_candidates([caption_item([d["text"], d["triples"]]) for d in with_facts]) == text_candidates(with_facts)


def test_compact_schemas_accept_the_compact_answers_refuse_the_old_and_bound_the_cap(cfg):
    """The fast path's schemas (tuples, bare strings and arrays) admit exactly the compact forms,
    their worst case is what the token cap is computed from, and the compact forms are shorter."""
    import xgrammar as xgr
    from transformers import AutoTokenizer

    from kbridge.engine import zoo
    from kbridge.engine.lmm import parse_json

    k = cfg.knowledge
    tok = AutoTokenizer.from_pretrained(zoo.resolve("lmm", cfg))
    comp = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok)))
    dump = lambda v: json.dumps(v, separators=(", ", ": "))  # noqa: E731  (xgrammar's separators)
    words = " ".join(["word"] * k.prompt_words[0])
    cap_words = " ".join(["word"] * k.caption_words[0])
    facts = [list(FACTS[i % 2]) for i in range(k.triples)]
    objs = [[n.strip(), c, a[:k.max_attributes]] for n, c, a in OBJECTS[:k.max_objects]]
    cases = [  # (schema, compact answer, the old wrapped / keyed answer of the same content)
        (S.knowledge(k), {"objects": objs, "style": "photo", "triples": facts},
         {"objects": [{"name": n, "count": c, "attributes": a} for n, c, a in objs], "style": "photo",
          "triples": facts}),
        (S.prompt_text(k), words, {"prompt": words}),
        (S.caption(k, False), cap_words, {"text": cap_words}),
        (S.caption(k, True), [cap_words, facts[:k.caption_triples]], {"text": cap_words, "triples": facts[:k.caption_triples]}),
        (S.triple_list(k), facts, {"triples": facts}),
    ]
    for schema, new, old in cases:
        g = comp.compile_json_schema(json.dumps(schema), any_whitespace=False)
        assert xgr.GrammarMatcher(g).accept_string(dump(new)), schema
        assert not xgr.GrammarMatcher(g).accept_string(dump(old)), schema
        assert parse_json(dump(new), schema) == new
        assert len(tok(dump(new))["input_ids"]) < len(tok(dump(old))["input_ids"])
    # the caps: every string and array at its bound still fits
    longest = [["n" * k.name_chars, 99, ["a" * (k.name_chars * 3 // 2)] * k.max_attributes]] * k.max_objects
    widest = ["h" * k.name_chars, "r" * max(8, k.name_chars * 3 // 4), "t" * k.name_chars]
    full = {"objects": longest, "style": "s" * (k.name_chars * 3 // 2), "triples": [widest] * k.triples}
    assert max_chars(S.knowledge(k)) == len(dump(full))
    assert max_chars(S.triple_list(k)) == len(dump([widest] * k.triples))
    assert max_chars(S.prompt_text(k)) == 17 * k.prompt_words[1] - 1 + 2
