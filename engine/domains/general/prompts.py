"""Prompt text of the general domain's LMM calls, and its message builders.

Layout is prefix-cache friendly: the system prompt and the task instructions come first, the
sample's own content (text, image, knowledge) last, so concurrent requests share a long prefix.
Bump ``lmm.PROMPT_VERSION`` whenever any text here changes: it is part of the response-cache key.
"""
from __future__ import annotations

import json

from PIL import Image

from kbridge.engine.config import KnowledgeConfig
from kbridge.engine.lmm import assistant_message, system_message, user_message
from kbridge.engine.types import Knowledge

SYSTEM = ("You turn images and texts into structured knowledge for a dataset-completion engine. "
          "Be concrete: specific nouns, visible counts, plain attributes. Never invent what is not supported "
          "by the input.")


def _sys() -> dict:
    return system_message(SYSTEM)


def _source(text: str | None, image: Image.Image | None) -> list:
    """The sample content, always last."""
    return [image] if image is not None else [f"Text: {text}"]


def _what(image) -> str:
    return "the image" if image is not None else "the text"


# ---------------------------------------------------------------- extraction

def knowledge_fast(k: KnowledgeConfig, text: str | None, image: Image.Image | None) -> list[dict]:
    ask = (f"Read {_what(image)} below and return one JSON record. objects: up to {k.max_objects} salient "
           f"objects, each as [specific name, how many are present, [up to {k.max_attributes} short "
           f"attributes]]. style: the overall visual or writing style in a few words. triples: up to {k.triples} "
           "distinct (head, relation, tail) facts connecting the objects, their attributes and the scene; "
           "heads and tails are short noun phrases, relations are short verbs or prepositions.")
    return [_sys(), user_message(ask, *_source(text, image))]


def chain_describe(k: KnowledgeConfig, text: str | None, image: Image.Image | None) -> list[dict]:
    """Reference fidelity, turn 1: a free-text characterisation."""
    ask = (f"Study {_what(image)} below. Name up to {k.max_objects} salient objects with specific nouns, say how "
           "many of each there are and describe their attributes, then describe the overall style.")
    return [_sys(), user_message(ask, *_source(text, image))]


CHAIN_OBJECTS = "Restate your description as a JSON record with the objects, their counts and attributes, and the style."


def chain_triples_ask(k: KnowledgeConfig, image: Image.Image | None) -> dict:
    """Reference fidelity, turn 3 (the image is attached again, as the reference does)."""
    ask = (f"Now list {k.triples} distinct (head, relation, tail) facts about {_what(image)}, connecting its "
           "objects, attributes and scene.")
    return user_message(ask, *([image] if image is not None else []))


CHAIN_TRIPLES = "Restate those facts as JSON: a list of triples with head, relation and tail."


def continue_chain(messages: list[dict], answer: str, follow_up: dict | str) -> list[dict]:
    nxt = follow_up if isinstance(follow_up, dict) else user_message(follow_up)
    return [*messages, assistant_message(answer), nxt]


# ---------------------------------------------------------------- generation

def _knowledge_block(kn: Knowledge) -> str:
    return "Knowledge: " + json.dumps(kn.as_dict(), separators=(",", ":"))


def prompts_fast(k: KnowledgeConfig, n: int, text: str, kn: Knowledge) -> list[dict]:
    lo, hi = k.prompt_words
    ask = (f"The image of this sample is lost; its text and the knowledge extracted from it are below. Write {n} "
           f"different text-to-image prompts, each {lo} to {hi} words, that could each have produced a faithful "
           "photograph of the scene: keep every object, count and relation, vary viewpoint, lighting, framing "
           "and background detail between prompts.")
    return [_sys(), user_message(ask, _knowledge_block(kn), f"Text: {text}")]


def chain_scene(k: KnowledgeConfig, text: str, kn: Knowledge) -> list[dict]:
    """Reference fidelity: a scene paragraph first, then serial variants, then compression."""
    ask = ("The image of this sample is lost. From its text and knowledge below, describe the scene of the "
           "lost image in one detailed paragraph.")
    return [_sys(), user_message(ask, _knowledge_block(kn), f"Text: {text}")]


CHAIN_FIRST = "From that scene, write the first description of the lost image as a picture: what is seen and where."
"""Reference fidelity: the separate first-description turn after the scene paragraph."""

CHAIN_VARIANT = "Describe the same scene once more, differently: another viewpoint, lighting or framing."


def chain_compress(k: KnowledgeConfig, description: str) -> list[dict]:
    lo, hi = k.prompt_words
    ask = f"Compress this scene description into one text-to-image prompt of {lo} to {hi} words."
    return [_sys(), user_message(ask, f"Description: {description}")]


def captions_fast(k: KnowledgeConfig, n: int, image: Image.Image, kn: Knowledge,
                  with_triples: bool = True) -> list[dict]:
    """``with_triples``: the schema asks for each caption's facts too (and only then the text does)."""
    lo, hi = k.caption_words
    ask = (f"The text of this sample is lost. Write {n} different captions of {lo} to {hi} words for the image "
           f"below, each faithful to the image and to the knowledge, varying wording and focus"
           + (f"; give each caption up to {k.caption_triples} (head, relation, tail) facts it states." if with_triples
              else "."))
    return [_sys(), user_message(ask, _knowledge_block(kn), image)]


ANGLES = ("the whole scene in a wide shot", "a close view of the main object", "soft morning daylight",
          "a low viewpoint looking up", "warm evening light with long shadows", "seen from above",
          "a side view with more of the background", "an overcast day with even light",
          "a centred, symmetric framing", "a candid snapshot feel", "shallow depth of field",
          "bright midday sun", "the scene's edges and surroundings", "a muted colour palette",
          "a vivid colour palette", "a slightly tilted handheld framing")
"""One distinct angle per parallel candidate (generation.candidates is at most 16)."""


def prompt_one(k: KnowledgeConfig, n: int, j: int, text: str, kn: Knowledge) -> list[dict]:
    """Parallel writing: the shared prefix (task, knowledge, text), then which of the n prompts
    this sequence writes and its angle, last, so the n sequences share everything before it."""
    lo, hi = k.prompt_words
    ask = (f"The image of this sample is lost; its text and the knowledge extracted from it are below. {n} "
           f"text-to-image prompts of {lo} to {hi} words are being written for it, one by one writer each; every "
           "prompt must keep every object, count and relation so that it could have produced a faithful "
           "photograph of the scene.")
    return [_sys(), user_message(ask, _knowledge_block(kn), f"Text: {text}",
                          f"You write prompt {j + 1} of {n}. Its angle: {ANGLES[j % len(ANGLES)]}.")]


def caption_one(k: KnowledgeConfig, n: int, j: int, image: Image.Image, kn: Knowledge,
                with_triples: bool) -> list[dict]:
    """Parallel writing of caption j of n (shared prefix first, the candidate's own angle last)."""
    lo, hi = k.caption_words
    ask = (f"The text of this sample is lost. {n} captions of {lo} to {hi} words are being written for the "
           "image below, one by one writer each; every caption must be faithful to the image and the knowledge"
           + (f", and carry up to {k.caption_triples} (head, relation, tail) facts it states." if with_triples
              else "."))
    return [_sys(), user_message(ask, _knowledge_block(kn), image,
                          f"You write caption {j + 1} of {n}. Its focus: {ANGLES[j % len(ANGLES)]}.")]


def caption_triples(k: KnowledgeConfig, text: str) -> list[dict]:
    """Triples of a written caption, read from the caption alone (not from the sample's knowledge)."""
    ask = (f"List up to {k.triples} distinct (head, relation, tail) facts that the caption below states, "
           "connecting its objects, attributes and scene.")
    return [_sys(), user_message(ask, f"Caption: {text}")]


def candidate_triples(k: KnowledgeConfig, image: Image.Image) -> list[dict]:
    """Triples of a generated image, for graph ranking (one batched pass over all candidates)."""
    ask = (f"List up to {k.triples} distinct (head, relation, tail) facts visible in the image below, "
           "connecting its objects, attributes and scene.")
    return [_sys(), user_message(ask, image)]
