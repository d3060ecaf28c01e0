"""Qwen2-VL through transformers: batched generation, schema-guided JSON with xgrammar.

Sampling is per request and independent of batching: each row draws Gumbel noise from its own
generator seeded by the request (on the model's device), and greedy argmax over
``logits / T + Gumbel`` is an exact sample from ``softmax(logits / T)``. A row's tokens therefore
depend on its own seed only (up to float rounding of padded batches: the cross-setting rule).

Concurrent callers share batches: requests wait in one queue; whichever caller finds the model
free takes up to ``max_batch`` of them, its own or others', into one padded ``generate()``. A
row's answer is handed to its caller the step its end token is drawn (per-row stopping), not when
the batch's longest row ends; rows that have ended only ride along as padding until then.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from kbridge.engine.config import LMMConfig
from kbridge.engine.lmm import Generation, Request

log = logging.getLogger(__name__)


def model_fingerprint(path: Path) -> str:
    """Model id plus revision: the directory name and a hash of its config and weight sizes."""
    h = hashlib.sha256()
    for f in sorted(path.glob("*.json")) + sorted(path.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(f.read_bytes() if f.suffix == ".json" else str(f.stat().st_size).encode())
    return f"{path.name}@{h.hexdigest()[:12]}"


class _GuidedSampler:
    """Logits processor: grammar masks (xgrammar), per-row token caps, per-row seeded sampling.

    Everything that meets the logits lives on the logits' device (F1/F2 of the GPU review): the
    bitmask is filled on the CPU (xgrammar's matchers write host memory) and copied over, temps and
    banned ids are moved once, and the Gumbel noise is drawn by one generator per row on that device
    (seeded by the request, so a row still depends on its own seed only).

    A structured row whose answer is complete (its grammar admits nothing but the end token) stops
    there: ``stop`` is also generate()'s stopping criterion, so the forced end token is never
    decoded (nor counted: the model is not run for it). The answer's text is the same."""

    def __init__(self, matchers, seeds, temps, caps, eos: int, banned: list[int], vocab: int, greedy: bool,
                 on_end=None):
        """``on_end(row, input_ids_row)``: called once per row, the step after its end token was
        drawn, with that row's ids so far (prompt and generated, the end token last)."""
        import xgrammar as xgr

        self.xgr = xgr
        self.matchers, self.caps, self.eos, self.greedy = matchers, caps, eos, greedy
        self.seeds = [int(s) % (2**63) for s in seeds]
        self.temps = torch.tensor(temps, dtype=torch.float32).clamp_min(1e-4)[:, None]  # [B, 1]
        self.banned = torch.tensor(banned, dtype=torch.long)
        self.bitmask = xgr.allocate_token_bitmask(len(matchers), vocab)  # [B, ceil(V/32)] int32, host
        self.gens: list[torch.Generator] = []
        self.device: torch.device | None = None
        self.done = [False] * len(matchers)
        self.complete = [False] * len(matchers)
        """Rows ended by their grammar (no end token decoded)."""
        self.step = 0
        self.seen: int | None = None  # input length whose last tokens were accepted
        self.on_end = on_end
        self.stop = _GrammarComplete(self)

    def _to(self, device: torch.device) -> None:
        """Move the per-call state to the logits' device, once (the first call sees the device)."""
        if self.device == device:
            return
        self.device = device
        self.temps = self.temps.to(device)
        self.banned = self.banned.to(device)
        # CUDA logits: CUDA generators (no 152k host randoms per row per step); otherwise the CPU's
        gen_dev = device if device.type == "cuda" else torch.device("cpu")
        self.gens = [torch.Generator(gen_dev).manual_seed(s) for s in self.seeds]

    def advance(self, input_ids: torch.Tensor) -> None:
        """Accept each live row's newest token (once per step: generate() calls this as its stopping
        criterion after appending a token, and the next logits call finds it done)."""
        if input_ids is None:  # a direct call with scores only (no tokens to accept)
            return
        n = input_ids.shape[1]
        if self.seen is None:  # the first logits call: the prompt only
            self.seen = n
        if n <= self.seen:
            return
        self.seen = n
        last = input_ids[:, -1].tolist()  # one device→host copy per step, not one per row
        for i, m in enumerate(self.matchers):
            if self.done[i]:
                continue
            tok = int(last[i])
            if tok == self.eos:
                self.done[i] = True
                if self.on_end is not None:
                    self.on_end(i, input_ids[i])
            elif m is not None and not m.accept_token(tok):
                log.warning("grammar rejected token %d in row %d", tok, i)
                self.done[i] = True
            elif m is not None and m.is_completed() and self._only_end(i):
                self.done[i] = self.complete[i] = True
                if self.on_end is not None:
                    self.on_end(i, input_ids[i])

    def _only_end(self, i: int) -> bool:
        """Whether row ``i``'s grammar admits the end token and nothing else (its answer is whole)."""
        import numpy as np

        self.matchers[i].fill_next_token_bitmask(self.bitmask, i)
        bits = np.unpackbits(self.bitmask[i].numpy().view(np.uint8), bitorder="little")
        return int(bits.sum()) == 1 and bool(bits[self.eos])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # scores: [B, V] float, on the model's device
        scores = scores.float()
        b, v = scores.shape
        self._to(scores.device)
        self.advance(input_ids)
        guided = []
        for i, m in enumerate(self.matchers):
            if self.done[i] or self.step >= self.caps[i] - 1:  # the cap counts the end token
                scores[i].fill_(float("-inf"))
                scores[i, self.eos] = 0.0
            elif m is not None:
                m.fill_next_token_bitmask(self.bitmask, i)
                guided.append(i)
            else:
                scores[i, self.banned] = float("-inf")
        if guided:
            mask = self.bitmask[:, : (v + 31) // 32].to(scores.device, non_blocking=True).contiguous()
            self.xgr.apply_token_bitmask_inplace(scores, mask, vocab_size=v, indices=guided)
        if not self.greedy:
            u = torch.stack([torch.rand(v, generator=g, device=scores.device) for g in self.gens]).clamp_(1e-20, 1.0)
            scores = scores / self.temps - torch.log(-torch.log(u))
        self.step += 1
        return scores


class _GrammarComplete(StoppingCriteria):
    """generate()'s stopping criterion: a row stops the step its grammar completes (after it, the
    row gets padding, not an end token)."""

    def __init__(self, sampler: _GuidedSampler):
        self.sampler = sampler

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.sampler.advance(input_ids)
        return torch.tensor(self.sampler.complete, dtype=torch.bool, device=input_ids.device)


class _Pending:
    """One request waiting for, or in, a batch; ``fut`` gets its Generation or its error."""

    def __init__(self, req: Request):
        self.req = req
        self.fut: concurrent.futures.Future = concurrent.futures.Future()


class HFBackend:
    """The transformers backend. One generate() at a time, over the requests of every concurrent
    caller (module docstring); ``batches`` counts the generate() calls, ``batch_rows`` their rows."""

    def __init__(self, path: Path, cfg: LMMConfig):
        import xgrammar as xgr
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

        self.cfg = cfg
        self.path = Path(path)
        self.model_id = model_fingerprint(self.path)
        self.tok = AutoTokenizer.from_pretrained(self.path)
        self.tok.padding_side = "left"
        self.improc = Qwen2VLImageProcessorPil.from_pretrained(
            self.path, min_pixels=cfg.image_min_pixels, max_pixels=cfg.image_max_pixels)
        dtype = getattr(torch, cfg.dtype)
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(self.path, dtype=dtype).to(cfg.device).eval()
        self.eos = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos
        self.image_pad = "<|image_pad|>"
        self.merge = int(self.improc.merge_size)
        vocab = self.model.config.get_text_config().vocab_size
        self.vocab = vocab
        self.banned = [i for i in self.tok.all_special_ids if i != self.eos and i < vocab]
        info = xgr.TokenizerInfo.from_huggingface(self.tok, vocab_size=vocab, stop_token_ids=[self.eos])
        self.compiler = xgr.GrammarCompiler(info)
        self._grammars: dict[str, object] = {}
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._busy = False
        self.batches = 0
        self.batch_rows = 0

    def _grammar(self, schema: dict):
        key = json.dumps(schema)  # key order kept: the model writes fields in schema order
        if key not in self._grammars:
            self._grammars[key] = self.compiler.compile_json_schema(key, any_whitespace=False)
        return self._grammars[key]

    async def generate(self, requests: Sequence[Request]) -> list[Generation]:
        items = [_Pending(r) for r in requests]
        with self._cv:
            self._queue.extend(items)
        return await asyncio.to_thread(self._serve, items)

    def _serve(self, items: list[_Pending]) -> list[Generation]:
        """Until every one of ``items`` has its answer: wait while another caller's batch runs (it
        may hold some of them), else run the queue's first ``max_batch`` requests as one batch."""
        n = max(1, self.cfg.max_batch)
        while True:
            with self._cv:
                while self._busy and not all(i.fut.done() for i in items):
                    self._cv.wait()
                if all(i.fut.done() for i in items):
                    return [i.fut.result() for i in items]
                batch, self._queue = self._queue[:n], self._queue[n:]
                if not batch:  # cannot happen: an unanswered request is queued or in a running batch
                    raise RuntimeError("hf backend: request lost between batches")
                self._busy = True
            try:
                self._run(batch)
            except BaseException as e:  # interrupted: no caller of this batch may wait forever
                with self._cv:
                    for p in batch:
                        if not p.fut.done():
                            p.fut.set_exception(e)
                raise
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _run(self, batch: list[_Pending]) -> None:
        """One batch; if it fails as a whole, each request alone, so one caller's bad request
        (an unreadable image, say) fails only that caller."""
        def answer(i: int, gen: Generation) -> None:
            with self._cv:
                if not batch[i].fut.done():
                    batch[i].fut.set_result(gen)
                self._cv.notify_all()

        try:
            for i, gen in enumerate(self._generate_batch([p.req for p in batch], answer)):
                answer(i, gen)
        except Exception as e:  # noqa: BLE001 — handed to the callers, not swallowed
            if len(batch) == 1:
                with self._cv:
                    batch[0].fut.set_exception(e)
                    self._cv.notify_all()
                return
            for p in batch:
                if not p.fut.done():
                    self._run([p])

    def _render(self, req: Request) -> tuple[str, list]:
        images = [p["image"] for m in req.messages for p in m["content"] if p["type"] == "image"]
        msgs = [{"role": m["role"], "content": [{"type": "image"} if p["type"] == "image" else
                                                 {"type": "text", "text": p["text"]} for p in m["content"]]}
                for m in req.messages]
        text = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return text, images

    @torch.inference_mode()
    def _generate_batch(self, reqs: list[Request], on_answer=None) -> list[Generation]:
        """One padded generate() over ``reqs``; ``on_answer(row, Generation)`` gets a row's answer
        as soon as the row has ended (the returned list has every row's, the same ones)."""
        import xgrammar as xgr

        texts, images = [], []
        for r in reqs:
            t, imgs = self._render(r)
            texts.append(t)
            images.extend(imgs)
        extra = {}
        if images:
            vis = self.improc(images=images, return_tensors="pt")
            grids = vis["image_grid_thw"]
            counts = iter((grids.prod(-1) // (self.merge ** 2)).tolist())
            # expand each image placeholder to the number of merged vision tokens of its image
            texts = [_expand(t, self.image_pad, counts) for t in texts]
            extra = {"pixel_values": vis["pixel_values"].to(self.cfg.device, self.model.dtype),
                     "image_grid_thw": grids.to(self.cfg.device)}
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = enc["input_ids"].to(self.cfg.device)
        mask = enc["attention_mask"].to(self.cfg.device)
        matchers = [xgr.GrammarMatcher(self._grammar(r.schema)) if r.schema is not None else None for r in reqs]
        prompt_tokens = mask.sum(-1).tolist()
        width = ids.shape[1]

        def ended(row: int, row_ids: torch.Tensor) -> None:
            if on_answer is not None:
                on_answer(row, self._answer(row_ids[width:].tolist(), prompt_tokens[row]))

        sampler = _GuidedSampler(matchers, [r.seed for r in reqs],
                                 [r.temperature for r in reqs], [r.max_new_tokens for r in reqs],
                                 self.eos, self.banned, self.vocab, self.cfg.greedy, on_end=ended)
        # an explicit config: the checkpoint's own sampling defaults must not apply (the sampler
        # above does the sampling, greedy argmax over its perturbed scores picks the token)
        gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=max(r.max_new_tokens for r in reqs),
                                   eos_token_id=self.eos, pad_token_id=self.pad)
        self.batches += 1
        self.batch_rows += len(reqs)
        seq = self.model.generate(input_ids=ids, attention_mask=mask, **extra, generation_config=gen_cfg,
                                  logits_processor=[sampler], stopping_criteria=StoppingCriteriaList([sampler.stop]))
        new = seq[:, width:].cpu()
        return [self._answer(new[row].tolist(), m) for row, m in enumerate(prompt_tokens)]

    def _answer(self, toks: list[int], prompt_tokens: int) -> Generation:
        """A row's Generation from its generated ids: up to and including the first end token, or
        up to the padding that follows an answer its grammar ended (``_GuidedSampler``)."""
        ends = [toks.index(t) + (t == self.eos) for t in {self.eos, self.pad} if t in toks]
        n = min(ends) if ends else len(toks)
        return Generation(text=self.tok.decode(toks[:n], skip_special_tokens=True),
                          prompt_tokens=int(prompt_tokens), generated_tokens=n, token_ids=toks[:n])


def _expand(text: str, token: str, counts) -> str:
    parts = text.split(token)
    out = [parts[0]]
    for p in parts[1:]:
        n = next(counts, None)  # a StopIteration here would never resolve the awaiting future
        if n is None:
            raise ValueError(f"more {token} placeholders than images in the prompt")
        out.append(token * n)
        out.append(p)
    return "".join(out)
