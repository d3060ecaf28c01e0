"""Where generated tokens go: each decoded token of a structured answer classified by what it
carries, counted (no timing), so it can run on a loaded machine.

A token is one of
- ``content``: it carries at least one character the model chose (a name, a word, a count, the
  quote that ends a string);
- ``keys``: every character of it is forced by the grammar and some lie in an object key (the
  key, its quotes, the ``: `` after it);
- ``framing``: every character of it is forced by the grammar, the rest of the JSON (braces,
  brackets, quotes that open a string, ``", "`` between items);
- ``end``: the end-of-answer token.

"Forced" is read from xgrammar's jump-forward string at the token's position (the longest text the
grammar admits there whatever the model does): a forced token needs no model call under
jump-forward decoding. ``single`` counts the tokens whose step admitted one token only (the model's
logits could not change them at all). Free-text answers (no schema) are all content. A sequence
whose generated tokens reached its cap is ``cut``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

KINDS = ("content", "keys", "framing", "end")


@dataclass
class Tally:
    """Token counts of a set of sequences: by kind, content by field, and sequence figures."""

    kinds: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    fields: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Content tokens by the field of their first chosen character (``objects.name``, ``triples``...)."""
    single: int = 0
    sequences: int = 0
    cut: int = 0

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def add(self, other: "Tally") -> None:
        for k, v in other.kinds.items():
            self.kinds[k] += v
        for k, v in other.fields.items():
            self.fields[k] += v
        self.single += other.single
        self.sequences += other.sequences
        self.cut += other.cut


def char_fields(text: str) -> list[str]:
    """One label per character of a JSON text: the dotted field path of the value it belongs to
    (array levels add nothing: ``objects.name``; a bare answer's own value: ``value``), ``"key"``
    for the characters of an object key (quotes included), ``""`` for structure (braces, brackets,
    commas, colons, spaces)."""
    labels: list[str] = []
    stack: list[list] = []  # [kind, current key, expecting a key]
    in_str = is_key = esc = False
    buf = ""
    path = lambda: ".".join(k for kind, k, _ in stack if kind == "obj" and k)  # noqa: E731

    def leaf() -> str:
        return path() or "value"

    for ch in text:
        if in_str:
            labels.append("key" if is_key else leaf())
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
                if is_key:
                    stack[-1][1], stack[-1][2] = buf, False
                buf = ""
            elif is_key:
                buf += ch
            continue
        if ch == '"':
            is_key = bool(stack) and stack[-1][0] == "obj" and stack[-1][2]
            in_str = True
            labels.append("key" if is_key else leaf())
        elif ch in "{[":
            labels.append("")
            stack.append(["obj" if ch == "{" else "arr", "", ch == "{"])
        elif ch in "}]":
            labels.append("")
            stack.pop()
        elif ch == ",":
            labels.append("")
            if stack and stack[-1][0] == "obj":
                stack[-1][1], stack[-1][2] = "", True
        elif ch in ": \n\t":
            labels.append("key" if ch == ":" or (ch == " " and labels and labels[-1] == "key") else "")
        else:  # numbers, true/false/null
            labels.append(leaf())
    return labels


def classify(ids: list[int], matcher, vocab: list[bytes], eos: int, bitmask=None, root: str = "answer") -> Tally:
    """Classify one structured answer's generated ids (``matcher``: a fresh xgrammar
    GrammarMatcher of its schema, consumed; ``vocab``: each id's bytes, ``TokenizerInfo.decoded_vocab``).
    ``bitmask`` (``xgrammar.allocate_token_bitmask(1, len(vocab))``) turns on the ``single`` count;
    content fields are named ``root:field``."""
    t = Tally(sequences=1)
    body = b"".join(vocab[i] for i in ids if i != eos).decode("utf-8", errors="replace")
    labels = char_fields(body)
    at = 0
    for tok in ids:
        if bitmask is not None and not matcher.is_terminated():
            matcher.fill_next_token_bitmask(bitmask, 0)
            t.single += int(_allowed(bitmask, len(vocab)) == 1)
        if tok == eos:
            t.kinds["end"] += 1
            matcher.accept_token(tok)
            continue
        piece = vocab[tok].decode("utf-8", errors="replace")
        forced = matcher.find_jump_forward_string()
        n = 0
        while n < len(piece) and n < len(forced) and piece[n] == forced[n]:
            n += 1
        if n == len(piece):
            kind = "keys" if "key" in labels[at:at + len(piece)] else "framing"
            t.kinds[kind] += 1
        else:  # the first character the model chose names the field; a chosen "," or "]" is a list's length
            t.kinds["content"] += 1
            lab = labels[at + n] if at + n < len(labels) else ""
            t.fields[f"{root}:{lab or 'list lengths'}"] += 1
        at += len(piece)
        if not matcher.accept_token(tok):
            raise ValueError(f"token {tok} ({piece!r}) is not admitted by the schema at character {at}")
    return t


def _allowed(bitmask, vocab: int) -> int:
    """Tokens a one-row xgrammar bitmask admits (token i is bit i % 32 of int32 word i // 32)."""
    import numpy as np

    bits = np.unpackbits(bitmask[0].numpy().astype("<i4").view(np.uint8), bitorder="little")
    return int(bits[:vocab].sum())


def free_text(ids: list[int], eos: int, root: str = "answer") -> Tally:
    t = Tally(sequences=1)
    t.kinds["end"] += sum(1 for i in ids if i == eos)
    t.kinds["content"] += sum(1 for i in ids if i != eos)
    t.fields[f"{root}:free text"] += t.kinds["content"]
    return t


def breakdown(seen, tokenizer_info, compile_schema, eos: int, single: bool = True) -> dict[str, Tally]:
    """One Tally per stage (``extract``, ``generate``, ``rank``) from (request, generation) pairs
    whose generations carry ``token_ids``; ``compile_schema(schema)`` gives the compiled grammar.
    Content fields are named ``stage:field`` (``generate:value``: a bare prompt or caption)."""
    import json

    import xgrammar as xgr

    vocab = [bytes(b) for b in tokenizer_info.decoded_vocab]
    mask = xgr.allocate_token_bitmask(1, tokenizer_info.vocab_size) if single else None
    out: dict[str, Tally] = defaultdict(Tally)
    for req, gen in seen:
        if gen.error is not None or gen.token_ids is None:
            continue
        if req.schema is None:
            t = free_text(gen.token_ids, eos, req.stage)
        else:
            t = classify(gen.token_ids, xgr.GrammarMatcher(compile_schema(json.dumps(req.schema))), vocab, eos, mask,
                         req.stage)
        t.cut = int(len(gen.token_ids) >= req.max_new_tokens)
        out[req.stage].add(t)
    return dict(out)


class Recording:
    """An LMM backend that keeps every (request, generation) pair it answers (the breakdown's input)."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []
        self.model_id = inner.model_id
        self.continuous_batching = getattr(inner, "continuous_batching", False)

    @property
    def dead(self):
        return getattr(self.inner, "dead", None)

    async def generate(self, requests):
        gens = await self.inner.generate(requests)
        self.seen.extend(zip(requests, gens))
        return gens

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()


def measure(cfg, samples: int, work) -> dict:
    """Run ``samples`` samples of the e2e benchmark's set (alternating image- / text-missing) with
    the hf backend and no response cache; per missing modality: the e2e benchmark's generated tokens
    per sample (from the results' counts, as ``bench e2e`` counts them) and the breakdown per stage
    (tokens per sample), whose total must equal it."""
    import dataclasses
    from pathlib import Path

    import xgrammar as xgr

    from kbridge.benchmarks.e2e import bench_dataset, split_by_missing
    from kbridge.engine.api import Engine
    from kbridge.engine.models import load_lmm
    from kbridge.engine.store import read_results

    if cfg.lmm.backend != "hf":
        raise ValueError("the token breakdown needs the hf backend (it reads the decoded token ids)")
    cfg = dataclasses.replace(cfg, lmm=dataclasses.replace(cfg.lmm, cache=False))
    work = Path(work)
    data = bench_dataset(work / "data", samples)
    eng = Engine(cfg)
    rec: list[Recording] = []
    eng.loaders["lmm"] = lambda c: rec.append(Recording(load_lmm(c))) or rec[-1]
    eng.run(data=data, fmt="coco", missing=data / "missing.json", out=work / "out")
    rows = list(read_results(work / "out"))
    missing = {r["sample_id"]: r["missing"] for r in rows}
    counted = {r["missing"]: r["generated_tokens_per_sample"] for r in split_by_missing(
        "kbridge", {r["sample_id"]: r["counts"] for r in rows}, missing)}
    hf = rec[0].inner
    info = xgr.TokenizerInfo.from_huggingface(hf.tok, vocab_size=hf.vocab, stop_token_ids=[hf.eos])
    compiler = xgr.GrammarCompiler(info)
    out = {}
    for kind in ("image", "text"):
        mine = [(q, g) for r in rec for q, g in r.seen if missing.get(q.sample_id) == kind]
        n = sum(1 for m in missing.values() if m == kind)
        if not n:
            continue
        stages = breakdown(mine, info, lambda s: compiler.compile_json_schema(s, any_whitespace=False), hf.eos)
        out[kind] = {"samples": n, "generated_tokens_per_sample": counted[kind],
                     "stages": {st: _per_sample(t, n) for st, t in stages.items()}}
        out[kind]["total"] = _per_sample(_sum(stages.values()), n)
    return out


def _sum(tallies) -> Tally:
    t = Tally()
    for x in tallies:
        t.add(x)
    return t


def _per_sample(t: Tally, n: int) -> dict:
    return {**{k: v / n for k, v in t.kinds.items()}, "total": t.total / n, "single": t.single / n,
            "sequences": t.sequences / n, "cut": t.cut / n,
            "content_by_field": {k: v / n for k, v in sorted(t.fields.items(), key=lambda kv: -kv[1])}}


def table(report: dict) -> str:
    """Markdown tables of ``measure``'s report: tokens per sample by stage and kind, then content
    tokens by field."""
    cols = ["stage", *KINDS, "total", "forced share", "single", "sequences", "cut"]
    lines = []
    for kind, r in report.items():
        lines += [f"\n{kind} missing ({r['samples']} samples): generated tokens per sample "
                  f"{r['generated_tokens_per_sample']:.1f} (bench e2e's count)\n",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for st, d in [*r["stages"].items(), ("all", r["total"])]:
            forced = (d["keys"] + d["framing"] + d["end"]) / d["total"] if d["total"] else 0.0
            lines.append("| " + " | ".join([st, *[f"{d[k]:.1f}" for k in KINDS], f"{d['total']:.1f}",
                                            f"{forced:.0%}", f"{d['single']:.1f}", f"{d['sequences']:.1f}",
                                            f"{d['cut']:.1f}"]) + " |")
        lines += ["", "content tokens by field: " + ", ".join(
            f"{f} {v:.1f}" for f, v in r["total"]["content_by_field"].items())]
    return "\n".join(lines)
