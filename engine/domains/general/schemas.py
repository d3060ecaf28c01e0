"""JSON schemas of the general domain's structured answers, built from the knowledge bounds
(bounded strings and arrays from engine/lmm/grammar.py, so every answer has a known longest form)."""
from __future__ import annotations

from kbridge.engine.config import KnowledgeConfig
from kbridge.engine.domains.lmm import triple
from kbridge.engine.lmm.grammar import array, obj, text, words


def _lo(k: KnowledgeConfig, n: int) -> int:
    return n if k.exact else 1


def triples(k: KnowledgeConfig, n: int | None = None) -> dict:
    n = n or k.triples
    return obj({"triples": array(triple(k), _lo(k, n), n)})


def objects(k: KnowledgeConfig) -> dict:
    """Objects with counts and attributes, and the overall style (the reference's turn 2)."""
    item = obj({"name": text(k.name_chars), "count": {"type": "integer", "minimum": 1, "maximum": 99},
                "attributes": array(text(k.name_chars * 3 // 2), 0, k.max_attributes)})
    return obj({"objects": array(item, _lo(k, k.max_objects), k.max_objects),
                "style": text(k.name_chars * 3 // 2)})


def object_item(k: KnowledgeConfig) -> dict:
    """One object as a ``[name, count, [attributes]]`` tuple: the keyed form (``objects``) repeats
    ``"name": ``, ``"count": `` and ``"attributes": `` in every object, forced characters the model
    is run for that carry nothing; ``parse_knowledge`` reads both into the same record."""
    return {"type": "array", "prefixItems": [text(k.name_chars), {"type": "integer", "minimum": 1, "maximum": 99},
                                             array(text(k.name_chars * 3 // 2), 0, k.max_attributes)],
            "items": False, "minItems": 3, "maxItems": 3}


def knowledge(k: KnowledgeConfig) -> dict:
    """The whole record in one answer (fast fidelity): objects as tuples (``object_item``), style
    and triples. The reference chain keeps the keyed objects of its turn 2 (``objects``)."""
    return obj({"objects": array(object_item(k), _lo(k, k.max_objects), k.max_objects),
                "style": text(k.name_chars * 3 // 2), "triples": array(triple(k), _lo(k, k.triples), k.triples)})


def triple_list(k: KnowledgeConfig, n: int | None = None) -> dict:
    """Triples as the answer itself, a bare array (fast fidelity's candidate triples): no
    ``{"triples": …}`` wrapper in each of the batch's sequences."""
    n = n or k.triples
    return array(triple(k), _lo(k, n), n)


def prompts(k: KnowledgeConfig, n: int) -> dict:
    return obj({"prompts": array(words(*k.prompt_words), n, n)})


def prompt(k: KnowledgeConfig) -> dict:
    """One compressed diffusion prompt (the reference's per-candidate compression call)."""
    return obj({"prompt": words(*k.prompt_words)})


def captions(k: KnowledgeConfig, n: int, with_triples: bool = True) -> dict:
    """N captions; each carries its own triples unless the reference chain re-extracts them."""
    props = {"text": words(*k.caption_words)}
    if with_triples:
        props["triples"] = array(triple(k), _lo(k, k.caption_triples), k.caption_triples)
    return obj({"captions": array(obj(props), n, n)})


def prompt_text(k: KnowledgeConfig) -> dict:
    """One prompt of parallel writing as the answer itself, a bare JSON string (each of the N
    sequences would otherwise spend tokens on its own ``{"prompt": …}`` frame)."""
    return words(*k.prompt_words)


def caption(k: KnowledgeConfig, with_triples: bool) -> dict:
    """One caption of parallel writing: a bare JSON string, or ``[text, [triples]]`` when the
    writer reports its facts (``write.caption_item`` reads both into the joint answer's items)."""
    body = words(*k.caption_words)
    if not with_triples:
        return body
    return {"type": "array", "prefixItems": [body, array(triple(k), _lo(k, k.caption_triples), k.caption_triples)],
            "items": False, "minItems": 2, "maxItems": 2}
