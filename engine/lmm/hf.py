"""Qwen2-VL through transformers: batched generation, schema-guided JSON with xgrammar.

Sampling is per request and independent of batching: each row draws Gumbel noise from its own
generator seeded by the request (on the model's device), and greedy argmax over
``logits / T + Gumbel`` is an exact sample from ``softmax(logits / T)``. A row's tokens therefore
depend on its own seed only.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Sequence

import torch
from transformers import GenerationConfig

from kbridge.engine.config import LMMConfig
from kbridge.engine.lmm import Generation, Request

log = logging.getLogger("kbridge.lmm.hf")


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
    (seeded by the request, so a row still depends on its own seed only)."""

    def __init__(self, matchers, seeds, temps, caps, eos: int, banned: list[int], vocab: int, greedy: bool):
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
        self.step = 0

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

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # scores: [B, V] float, on the model's device
        scores = scores.float()
        b, v = scores.shape
        self._to(scores.device)
        if self.step > 0:
            last = input_ids[:, -1].tolist()  # one device→host copy per step, not one per row
            for i, m in enumerate(self.matchers):
                if self.done[i]:
                    continue
                tok = int(last[i])
                if tok == self.eos:
                    self.done[i] = True
                elif m is not None and not m.accept_token(tok):
                    log.warning("grammar rejected token %d in row %d", tok, i)
                    self.done[i] = True
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


class HFBackend:
    """The transformers backend. One generate() at a time; concurrent callers queue on a lock."""

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
        self._lock = threading.Lock()

    def _grammar(self, schema: dict):
        key = json.dumps(schema)  # key order kept: the model writes fields in schema order
        if key not in self._grammars:
            self._grammars[key] = self.compiler.compile_json_schema(key, any_whitespace=False)
        return self._grammars[key]

    async def generate(self, requests: Sequence[Request]) -> list[Generation]:
        # One generate() per call, serialised by the lock. Merging concurrent callers into one
        # generate() was measured 2.5x slower end to end here: a short request merged with long
        # ones is only returned when the longest finishes (no continuous batching in HF), which
        # stalls the pipeline behind it.
        return await asyncio.to_thread(self._generate_all, list(requests))

    def _generate_all(self, requests: list[Request]) -> list[Generation]:
        out: list[Generation] = []
        n = max(1, self.cfg.max_batch)
        with self._lock:
            for i in range(0, len(requests), n):
                out.extend(self._generate_batch(requests[i:i + n]))
        return out

    def _render(self, req: Request) -> tuple[str, list]:
        images = [p["image"] for m in req.messages for p in m["content"] if p["type"] == "image"]
        msgs = [{"role": m["role"], "content": [{"type": "image"} if p["type"] == "image" else
                                                 {"type": "text", "text": p["text"]} for p in m["content"]]}
                for m in req.messages]
        text = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return text, images

    @torch.inference_mode()
    def _generate_batch(self, reqs: list[Request]) -> list[Generation]:
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
        sampler = _GuidedSampler(matchers, [r.seed for r in reqs],
                                 [r.temperature for r in reqs], [r.max_new_tokens for r in reqs],
                                 self.eos, self.banned, self.vocab, self.cfg.greedy)
        # an explicit config: the checkpoint's own sampling defaults must not apply (the sampler
        # above does the sampling, greedy argmax over its perturbed scores picks the token)
        gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=max(r.max_new_tokens for r in reqs),
                                   eos_token_id=self.eos, pad_token_id=self.pad)
        seq = self.model.generate(input_ids=ids, attention_mask=mask, **extra, generation_config=gen_cfg,
                                  logits_processor=[sampler])
        new = seq[:, ids.shape[1]:].cpu()
        out = []
        for row, m in zip(range(len(reqs)), mask.sum(-1).tolist()):
            toks = new[row].tolist()
            n = toks.index(self.eos) + 1 if self.eos in toks else len(toks)
            text = self.tok.decode(toks[:n], skip_special_tokens=True)
            out.append(Generation(text=text, prompt_tokens=int(m), generated_tokens=n))
        return out


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
