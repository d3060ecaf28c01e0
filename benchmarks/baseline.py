"""The reference's execution pattern, re-created on kbridge's own models: a benchmark fixture,
not a product path.

What it reproduces (KNOWLEDGE_BRIDGER.md): three stage scripts run one after the other over the
dataset, each loading its models; per sample and per candidate one LMM request at a time; the
4-turn extraction chain; a scene turn, a first-description turn, (n - 1) serial variant turns and
n compression calls (image missing), a free-text description turn then the captions (text
missing), so 47 / 34 calls and 17 / 10 serial turns per sample at n = 7;
SDXL at batch 1; every candidate re-extracted with the full 4-turn chain; CLIP scoring one pair
at a time (the available modality re-encoded for every pair); knowledge, prompts, images and
rankings written to files and read back between stages. It uses the same models, steps,
refiner, image sizes, thread count and inference mode as the kbridge row; every free-text call is
capped at ``lmm.free_text_tokens`` (random models never stop by themselves).
"""
from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from kbridge.engine.config import PipelineConfig
from kbridge.engine.domains.general.knowledge import parse_knowledge
from kbridge.engine.lmm import build_request as _req
from kbridge.engine.lmm import LMMClient, RequestLog
from kbridge.engine.domains.general import prompts as P
from kbridge.engine.domains.general import schemas as S
from kbridge.engine.models import load_generator, load_lmm, load_scorer
from kbridge.engine.rank.graph import graph_scores
from kbridge.engine.rank.score import combine
from kbridge.engine.types import Knowledge, Sample, SampleError, derive_seed


@dataclass
class BaselineRun:
    wall_seconds: float = 0.0
    stage_seconds: dict = field(default_factory=lambda: defaultdict(float))
    sample_seconds: dict = field(default_factory=lambda: defaultdict(float))
    log: RequestLog = field(default_factory=RequestLog)
    unet_evals: dict = field(default_factory=lambda: defaultdict(int))
    vae_decodes: dict = field(default_factory=lambda: defaultdict(int))
    best: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    done_at: dict = field(default_factory=dict)
    """Seconds from the start of the run (before any model loads) to each sample's result."""


class _Timer:
    def __init__(self, run: BaselineRun, stage: str, sample_id: str | None = None):
        self.run, self.stage, self.sid = run, stage, sample_id

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        self.run.stage_seconds[self.stage] += dt
        if self.sid:
            self.run.sample_seconds[self.sid] += dt


def _one(client: LMMClient, req):
    """One request, alone: the reference sends them one at a time and waits."""
    r = asyncio.run(client.complete([req]))[0]
    if r.error:
        raise SampleError(req.sample_id, r.error)
    return r


def _chain(client, cfg, sid, tag, text, image, stage, turn0, temperature=None) -> Knowledge:
    k = cfg.knowledge
    msgs = P.chain_describe(k, text, image)
    steps = [(None, True, P.CHAIN_OBJECTS), (S.objects(k), False, None), (None, True, P.CHAIN_TRIPLES),
             (S.triples(k), False, None)]
    answers = []
    for turn, (schema, free, _) in enumerate(steps, start=1):
        r = _one(client, _req(cfg, msgs, schema, sid, stage, turn0 + turn, tag, free, temperature))
        answers.append(r.parsed if schema else r.text)
        if turn == 1:
            msgs = P.continue_chain(msgs, r.text, P.CHAIN_OBJECTS)
        elif turn == 2:
            msgs = P.continue_chain(msgs, r.text, P.chain_triples_ask(k, image))
        elif turn == 3:
            msgs = P.continue_chain(msgs, r.text, P.CHAIN_TRIPLES)
    return parse_knowledge(answers[1], answers[3]["triples"])


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def run_reference_pattern(cfg: PipelineConfig, samples: list[Sample], work: Path,
                          loaded: dict | None = None) -> BaselineRun:
    """``loaded`` ({"lmm", "generator", "scorer"}): models kept loaded by a caller (the one-at-a-time
    server of ``bench serve``) instead of each script loading its own."""
    run = BaselineRun()
    loaded = loaded or {}
    n = cfg.generation.candidates
    t_start = time.perf_counter()
    ok = {s.sample_id: s for s in samples}

    def fail(s, e):
        run.errors.append({"sample_id": s.sample_id, "error": str(e)})
        ok.pop(s.sample_id, None)

    # ---- script 1: knowledge extraction
    with _Timer(run, "load"):
        backend = loaded.get("lmm") or load_lmm(cfg)
    client = LMMClient(backend, run.log, cache=None, greedy=cfg.lmm.greedy)
    for s in samples:
        with _Timer(run, "extract", s.sample_id):
            try:
                kn = _chain(client, cfg, s.sample_id, "", s.text, s.image, "extract", 0)
            except SampleError as e:
                fail(s, e)
                continue
        with _Timer(run, "io", s.sample_id):
            _write_json(work / s.sample_id.replace(":", "_") / "knowledge.json", kn.as_dict())
    del backend, client  # the script's models go before the next script loads its own
    gc.collect()

    # ---- script 2: generation
    with _Timer(run, "load"):
        backend = loaded.get("lmm") or load_lmm(cfg)
        gen = (loaded.get("generator") or load_generator(cfg)) if any(s.missing == "image" for s in ok.values()) \
            else None
    client = LMMClient(backend, run.log, cache=None, greedy=cfg.lmm.greedy)
    k = cfg.knowledge
    for s in list(ok.values()):
        d = work / s.sample_id.replace(":", "_")
        with _Timer(run, "io", s.sample_id):
            kn = parse_knowledge(json.loads((d / "knowledge.json").read_text()))
        try:
            if s.missing == "image":
                with _Timer(run, "write", s.sample_id):
                    # turn 5: the scene paragraph (context only); turns 6..5+n: the first description,
                    # then n - 1 variants, each seeing the ones before; turn 6+n: n compressions
                    msgs = P.chain_scene(k, s.text, kn)
                    r = _one(client, _req(cfg, msgs, None, s.sample_id, "generate", 5, "scene", free=True))
                    msgs, descs = P.continue_chain(msgs, r.text, P.CHAIN_FIRST), []
                    for j in range(n):
                        r = _one(client, _req(cfg, msgs, None, s.sample_id, "generate", 6 + j, j, free=True))
                        descs.append(r.text)
                        msgs = P.continue_chain(msgs, r.text, P.CHAIN_VARIANT)
                    prompts = [_one(client, _req(cfg, P.chain_compress(k, dsc), S.prompt(k), s.sample_id,
                                                 "generate", 6 + n, j)).parsed["prompt"]
                               for j, dsc in enumerate(descs)]
                for j, p in enumerate(prompts):
                    with _Timer(run, "render", s.sample_id):
                        before = (gen.counters.unet_evals, gen.counters.vae_decodes)
                        img = gen.render([p], [derive_seed(cfg.run.seed, s.sample_id, "image", j)])[0]
                        run.unet_evals[s.sample_id] += gen.counters.unet_evals - before[0]
                        run.vae_decodes[s.sample_id] += gen.counters.vae_decodes - before[1]
                    with _Timer(run, "io", s.sample_id):
                        img.save(d / f"id_{j}.jpg", quality=95)
                with _Timer(run, "io", s.sample_id):
                    _write_json(d / "prompts.json", prompts)
            else:
                with _Timer(run, "write", s.sample_id):
                    # turn 5: a free-text description of the image; turn 6: the captions, after it
                    msgs = P.chain_describe(k, None, s.image)
                    r = _one(client, _req(cfg, msgs, None, s.sample_id, "generate", 5, "describe", free=True))
                    msgs = P.continue_chain(msgs, r.text, P.captions_fast(k, n, s.image, kn, False)[-1])
                    r = _one(client, _req(cfg, msgs, S.captions(k, n, False), s.sample_id, "generate", 6))
                with _Timer(run, "io", s.sample_id):
                    _write_json(d / "captions.json", [c["text"] for c in r.parsed["captions"]])
        except SampleError as e:
            fail(s, e)
    del backend, client, gen
    gc.collect()

    # ---- script 3: ranking
    with _Timer(run, "load"):
        backend = loaded.get("lmm") or load_lmm(cfg)
        scorer = loaded.get("scorer") or load_scorer(cfg)
    client = LMMClient(backend, run.log, cache=None, greedy=cfg.lmm.greedy)
    for s in list(ok.values()):
        d = work / s.sample_id.replace(":", "_")
        with _Timer(run, "io", s.sample_id):
            kn = parse_knowledge(json.loads((d / "knowledge.json").read_text()))
            if s.missing == "image":
                cands = [Image.open(d / f"id_{j}.jpg").convert("RGB") for j in range(n)]
            else:
                cands = json.loads((d / "captions.json").read_text())
        scores = []
        try:
            for j, c in enumerate(cands):
                is_img = s.missing == "image"
                with _Timer(run, "candidate_knowledge", s.sample_id):
                    ck = _chain(client, cfg, s.sample_id, f"c{j}", None if is_img else c, c if is_img else None,
                                "rank", 6 + n if is_img else 6, cfg.lmm.rank_temperature)
                with _Timer(run, "rank", s.sample_id):
                    # one pair at a time: the available modality is encoded again for every pair
                    if is_img:
                        sem = float(scorer.embed_texts([s.text])[0] @ scorer.embed_images([c])[0])
                    else:
                        sem = float(scorer.embed_images([s.image])[0] @ scorer.embed_texts([c])[0])
                    sem = min(max(sem, 0.0), 1.0)
                    g = graph_scores([(kn.triples, ck.triples)], cfg.rank.graph_metric, scorer.embed_texts)[0]
                    scores.append(combine(sem, g, cfg.rank))
        except SampleError as e:
            fail(s, e)
            continue
        with _Timer(run, "io", s.sample_id):
            best = max(range(len(scores)), key=lambda j: (scores[j], -j))
            _write_json(d / "ranking.json", {"scores": scores, "best": best})
            run.best[s.sample_id] = f"c{best}"
        run.done_at[s.sample_id] = time.perf_counter() - t_start
    del backend, client, scorer
    gc.collect()
    run.wall_seconds = time.perf_counter() - t_start
    return run
