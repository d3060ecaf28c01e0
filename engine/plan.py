"""The GPU memory plan: which model goes on which GPU, with how much memory, and the schedule.

Inputs: the profile's LMM serving plan (engine/lmm/serving.py), its diffusion settings, and a GPU
list (``--gpus 4x24GB``, ``1x80GB``, ``1x80GB,2x24GB``; on a GPU box, the GPUs present). Weights
come from the model directories' safetensors headers when given, otherwise from the published
sizes below. The rules, in order:

1. The LMM needs, per GPU it spans, weights / TP + activations and CUDA graphs + a minimum KV cache
   (``max_num_seqs`` sequences of a fast knowledge call) / TP + the CUDA context. vLLM reserves
   ``gpu_memory_utilization`` × the card's total memory per GPU, whatever it needs, and refuses to
   start when less is free (vLLM 0.32 ``v1/worker/utils.py``, ``config/cache.py``): the plan books
   that reservation, and raises the utilisation (applied to the run) when the need is larger.
2. One diffusion worker needs SDXL base + refiner (shared text encoder 2 and VAE), the activations of
   its batch (classifier-free guidance doubles the UNet rows), the fp32 VAE decode peak of one image
   (decoded one at a time), and a CUDA context. The scorer (CLIP-L) goes beside the last worker.
3. Fused if every model fits at once: one GPU shares LMM and diffusion; with several GPUs an LMM that
   fits one card is replicated (data parallel: over PCIe, replicas beat tensor parallelism, vLLM
   recipes#30) on half of them and diffusion takes the rest, one worker per GPU.
4. Otherwise phased: the LMM gets every GPU (smallest TP that fits) while it runs, then one diffusion
   worker per GPU, then the scorer.

Sizes are GB (10⁹ bytes); ``--gpus 24GB`` means what the card reports, GiB (24 × 2³⁰ bytes = 25.8 GB).
What the plan cannot count (allocator fragmentation, cuDNN workspaces) is the printed headroom.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from kbridge.engine.config import ConfigError, PipelineConfig
from kbridge.engine.profiles import PROFILES
from kbridge.engine.errors import KbridgeError

GB = 1e9
GIB = 2 ** 30
LMM_GB = {  # weights as stored (README, *GPU memory plans*: parameter counts × bytes, embeddings in bf16;
    # GPTQ: int8/int4 weights + an fp16 scale and a packed zero per 128 inputs of each output, the vision
    # tower, embeddings and LM head in bf16 — 72B Int8: 70.2 + 1.1 + 0.55 + 4.98 + 1.35 = 78.2 GB)
    "Qwen2-VL-7B-Instruct": 16.6, "Qwen2-VL-7B-Instruct-GPTQ-Int8": 10.1, "Qwen2-VL-7B-Instruct-GPTQ-Int4": 7.0,
    "Qwen2-VL-72B-Instruct-GPTQ-Int8": 78.5, "Qwen2-VL-72B-Instruct-GPTQ-Int4": 41.0,
}
KV_KIB_PER_TOKEN = {"7B": 56, "72B": 320}  # layers × KV heads × head dim × (K, V) × 2 bytes
SDXL_BASE_GB, SDXL_REFINER_GB = 7.0, 4.5
CLIP_L_GB = 1.8  # CLIP ViT-L/14 as the scorer loads it: fp32, 427.6M × 4 B = 1.71 GB + activations
ACT_GB_PER_IMAGE_1024 = 2.0  # UNet activations per image at 1024² with guidance (two UNet rows)
VAE_FP32_PEAK_GB_1024 = 2.5  # the fp32 decode of one 1024² image (the SDXL VAE overflows in fp16)
CONTEXT_GB = 0.5  # CUDA context and allocator slack per process per GPU
LMM_ACT_GB = 2.0  # vLLM activations and CUDA graphs
TOKENS_PER_SEQ = 1536  # a fast knowledge call: prompt + 256 vision tokens + a bounded JSON answer


class PlanError(KbridgeError):
    """The models cannot be placed on the given GPUs even one phase at a time."""


@dataclass(frozen=True)
class GPU:
    device: str
    total_gb: float
    free_gb: float


def parse_gpus(spec: str) -> list[GPU]:
    """``4x24GB`` / ``1x80GB,2x24GB`` → GPUs ``cuda:0…`` (all free). A card's size is what it
    reports, GiB: ``24GB`` is 24 × 2³⁰ bytes (25.8 GB), like ``torch.cuda.mem_get_info``."""
    out: list[GPU] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"(\d+)\s*[xX×]\s*(\d+(?:\.\d+)?)\s*(?:GB|G)?", part)
        if not m:
            raise ConfigError(f"--gpus: {part!r} is not COUNTxSIZE (e.g. 4x24GB)")
        for _ in range(int(m.group(1))):
            size = round(float(m.group(2)) * GIB / GB, 2)
            out.append(GPU(f"cuda:{len(out)}", size, size))
    if not out:
        raise ConfigError("--gpus: no GPUs given")
    return out


def visible_gpus() -> list[GPU]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out.append(GPU(f"cuda:{i}", round(total / GB, 1), round(free / GB, 1)))
    return out


def safetensors_gb(path: str | Path) -> float | None:
    """Bytes of every tensor listed in a directory's safetensors headers (no weights are read)."""
    files = sorted(Path(path).rglob("*.safetensors")) if path and Path(path).is_dir() else []
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return total / GB if files else None


def _serve(cfg: PipelineConfig):
    from kbridge.engine.lmm.serving import DEFAULT_LOCAL, SERVE_PROFILES

    return SERVE_PROFILES.get(cfg.profile, DEFAULT_LOCAL)


def needs(cfg: PipelineConfig) -> dict:
    """Memory per role in GB, with where each number came from."""
    sp = _serve(cfg)
    lmm = safetensors_gb(cfg.models.lmm)
    lmm_src = "safetensors headers" if lmm else "published size"
    lmm = lmm or LMM_GB.get(sp.model, 16.6)
    kv_tok = KV_KIB_PER_TOKEN["72B" if "72B" in sp.model else "7B"] * 1024
    kv = sp.max_num_seqs * TOKENS_PER_SEQ * kv_tok / GB
    g = cfg.generation
    scale = g.height * g.width / 1024 ** 2
    base = safetensors_gb(cfg.models.sdxl_base) or SDXL_BASE_GB
    refiner = (safetensors_gb(cfg.models.sdxl_refiner) or SDXL_REFINER_GB) if g.refiner else 0.0
    batch = max(1, g.batch_size)
    diffusion = base + refiner + batch * ACT_GB_PER_IMAGE_1024 * scale + VAE_FP32_PEAK_GB_1024 * scale + CONTEXT_GB
    return {"lmm_weights": lmm, "lmm_source": lmm_src, "lmm_act": LMM_ACT_GB, "kv_min": kv, "model": sp.model,
            "diffusion": diffusion, "sdxl": base + refiner, "batch": batch, "scale": scale,
            "scorer": CLIP_L_GB, "max_num_seqs": sp.max_num_seqs, "util": sp.gpu_memory_utilization}


def _lmm_per_gpu(n: dict, tp: int) -> float:
    return n["lmm_weights"] / tp + n["lmm_act"] + n["kv_min"] / tp + CONTEXT_GB


def lmm_utilization(n: dict, tp: int, total_gb: float) -> float:
    """vLLM's ``gpu_memory_utilization`` for the LMM on a card of ``total_gb``: the profile's, or
    the smallest fraction (in hundredths) that holds what the LMM needs when that is more."""
    need = -(-_lmm_per_gpu(n, tp) * 100 // total_gb) / 100
    return round(max(n["util"], need), 2)


def _lmm_booked(n: dict, tp: int, g: GPU) -> float:
    """What vLLM takes on ``g``: utilisation × the card's total (never less than the need)."""
    return max(_lmm_per_gpu(n, tp), lmm_utilization(n, tp, g.total_gb) * g.total_gb)


def make_plan(cfg: PipelineConfig, gpus: list[GPU]) -> dict:
    n = needs(cfg)
    why = [f"LMM {n['model']}: {n['lmm_weights']:.1f} GB weights ({n['lmm_source']}) + {LMM_ACT_GB:.1f} activations/"
           f"graphs + {n['kv_min']:.1f} GB KV minimum ({n['max_num_seqs']} seqs × {TOKENS_PER_SEQ} tokens) + "
           f"{CONTEXT_GB} context; vLLM reserves gpu_memory_utilization × the card's total on each of its GPUs",
           f"diffusion worker: SDXL {n['sdxl']:.1f} GB + {n['batch']} × {ACT_GB_PER_IMAGE_1024 * n['scale']:.2f} GB "
           f"activations + {VAE_FP32_PEAK_GB_1024 * n['scale']:.2f} GB fp32 VAE decode (one image at a time) + "
           f"{CONTEXT_GB} context = {n['diffusion']:.1f} GB; scorer CLIP-L (fp32) {n['scorer']} GB"]
    place: dict[str, list[dict]] = {g.device: [] for g in gpus}
    G = len(gpus)

    def put(dev, model, role, gb, in_phases=(1, 2, 3, 4)):
        place[dev].append({"model": model, "role": role, "gb": round(gb, 2), "phases": list(in_phases)})

    def lmm_fits(g: GPU, tp: int, beside: float = 0.0) -> bool:
        return _lmm_per_gpu(n, tp) <= g.total_gb and _lmm_booked(n, tp, g) + beside <= g.free_gb

    schedule, phases, tp = "phased", [], 1
    if G == 1 and lmm_fits(gpus[0], 1, n["diffusion"] + n["scorer"]):
        d = gpus[0].device
        put(d, n["model"], "lmm", _lmm_booked(n, 1, gpus[0]))
        put(d, "sdxl", "diffusion", n["diffusion"])
        put(d, "clip", "scorer", n["scorer"])
        schedule = "fused"
        why.append(f"one GPU: vLLM {_lmm_booked(n, 1, gpus[0]):.1f} + {n['diffusion']:.1f} + {n['scorer']} ≤ "
                   f"{gpus[0].free_gb:g} GB → fused")
    elif G >= 2:
        k = max(1, G // 2)  # LMM replicas on the first half, diffusion workers on the rest
        lmm_gpus, diff_gpus = gpus[:k], gpus[k:]
        if all(lmm_fits(g, 1) for g in lmm_gpus) and all(n["diffusion"] <= g.free_gb for g in diff_gpus) and \
                n["diffusion"] + n["scorer"] <= diff_gpus[-1].free_gb:
            for g in lmm_gpus:
                put(g.device, n["model"], "lmm", _lmm_booked(n, 1, g))
            for g in diff_gpus:
                put(g.device, "sdxl", "diffusion", n["diffusion"])
            put(diff_gpus[-1].device, "clip", "scorer", n["scorer"])
            schedule = "fused"
            why.append(f"the LMM fits one GPU ({_lmm_per_gpu(n, 1):.1f} GB): {k} data-parallel replica(s) on "
                       f"{', '.join(g.device for g in lmm_gpus)} (replicas beat tensor parallel over PCIe), "
                       f"{len(diff_gpus)} diffusion worker(s) on {', '.join(g.device for g in diff_gpus)} → fused")
    if schedule == "phased":
        tp = next((t for t in (1, 2, 4, 8) if t <= G and all(lmm_fits(g, t) for g in gpus[:t])), 0)
        if not tp:
            raise PlanError(f"the LMM ({n['lmm_weights']:.1f} GB) does not fit {G} GPU(s) even alone: "
                            f"{_lmm_per_gpu(n, G):.1f} GB per GPU at TP {G}")
        diff = [g for g in gpus if n["diffusion"] <= g.free_gb]
        if not diff:
            raise PlanError(f"one diffusion worker needs {n['diffusion']:.1f} GB; no GPU has that much free")
        phases = [{"phase": "lmm", "stages": ["load", "extract", "write"], "devices": [g.device for g in gpus[:tp]]},
                  {"phase": "diffusion", "stages": ["render"], "devices": [g.device for g in diff]},
                  {"phase": "lmm", "stages": ["load", "candidate_knowledge"], "devices": [g.device for g in gpus[:tp]]},
                  {"phase": "rank", "stages": ["load", "retrieve", "rank"], "devices": [gpus[0].device]}]
        for g in gpus[:tp]:
            put(g.device, n["model"], "lmm", _lmm_booked(n, tp, g), (1, 3))
        for g in diff:
            put(g.device, "sdxl", "diffusion", n["diffusion"], (2,))
        put(gpus[0].device, "clip", "scorer", n["scorer"], (4,))
        why.append(f"LMM and diffusion do not fit together (vLLM {_lmm_booked(n, tp, gpus[0]):.1f} GB per GPU at TP "
                   f"{tp} + {n['diffusion']:.1f} GB) → phased: the LMM at TP {tp}, then {len(diff)} diffusion "
                   "worker(s), then the scorer; models are released between phases")
    util = lmm_utilization(n, tp, min(g.total_gb for g in gpus[:tp]))
    why.append(f"vLLM gpu_memory_utilization {util:.2f}" + (f" (raised from the profile's {n['util']:.2f}: "
               f"{_lmm_per_gpu(n, tp):.1f} GB per GPU does not fit less)" if util > n["util"] else " (the profile's)"))
    if schedule == "phased" and cfg.lmm.backend == "http":
        why.append("the LMM is an HTTP server: `kbridge run` starts it for each LMM phase and stops it before "
                   "render (lmm.manage_server), or the server must be stopped by hand")
    out_gpus = []
    for g in gpus:
        used = max(sum(p["gb"] for p in place[g.device] if k in p["phases"]) for k in (1, 2, 3, 4))
        out_gpus.append({"device": g.device, "total_gb": g.total_gb, "free_gb": g.free_gb,
                         "placements": place[g.device], "peak_gb": round(used, 2),
                         "headroom_gb": round(g.free_gb - used, 2)})
    return {"schedule": schedule, "gpus": out_gpus, "phases": phases, "reasoning": why,
            "lmm_gpu_memory_utilization": util}


def devices_of(plan: dict, role: str) -> list[str]:
    return [g["device"] for g in plan["gpus"] if any(p["role"].startswith(role) for p in g["placements"])]


def apply_plan(cfg: PipelineConfig, plan: dict) -> PipelineConfig:
    """The configuration with the plan's devices: the in-process LMM on its first GPU, one render
    worker per diffusion GPU, the scorer where the plan put it, and the plan's schedule when
    ``run.schedule`` is ``auto``. An LMM served over HTTP keeps its server's own GPUs."""
    from dataclasses import replace

    lmm, diff, scorer = devices_of(plan, "lmm"), devices_of(plan, "diffusion"), devices_of(plan, "scorer")
    gen = replace(cfg.generation, device=diff[0], devices=tuple(diff)) if diff else cfg.generation
    med = replace(cfg.medical, device=diff[0], devices=tuple(diff)) if diff else cfg.medical
    lm = replace(cfg.lmm, device=lmm[0]) if lmm and cfg.lmm.backend != "http" else cfg.lmm
    rank = replace(cfg.rank, device=scorer[0]) if scorer else cfg.rank
    if cfg.lmm.backend != "http" and "lmm_gpu_memory_utilization" in plan:  # what the plan booked for vLLM
        lm = replace(lm, gpu_memory_utilization=plan["lmm_gpu_memory_utilization"])
    run = replace(cfg.run, schedule=plan["schedule"]) if cfg.run.schedule == "auto" else cfg.run
    return replace(cfg, generation=gen, medical=med, lmm=lm, rank=rank, run=run)


def _present_plan(cfg: PipelineConfig) -> dict | None:
    """The plan on the GPUs present for a GPU profile; None on CPU profiles or without a GPU.
    Raises PlanError when the models cannot be placed there."""
    gpus = visible_gpus()
    on_gpu = any(d.startswith("cuda") for d in (cfg.lmm.device, cfg.generation.device, cfg.rank.device))
    if not gpus or not on_gpu or (cfg.profile in PROFILES and not PROFILES[cfg.profile].gpus):
        return None
    return make_plan(cfg, gpus)


def placed(cfg: PipelineConfig) -> PipelineConfig:
    """On a box with GPUs, a GPU profile runs where the plan for those GPUs puts it (the plan's
    schedule included, for ``auto``); elsewhere (CPU profiles, no GPU) the configuration is unchanged."""
    try:
        plan = _present_plan(cfg)
    except PlanError:
        return cfg
    return cfg if plan is None else apply_plan(cfg, plan)


def resolve_schedule(cfg: PipelineConfig) -> str:
    """``run.schedule``, or for ``auto`` the plan's choice on the GPUs present (CPU: fused; a plan
    that cannot place the models at all: phased)."""
    if cfg.run.schedule != "auto":
        return cfg.run.schedule
    try:
        plan = _present_plan(cfg)
    except PlanError:
        return "phased"
    return "fused" if plan is None else plan["schedule"]


def format_plan(plan: dict) -> str:
    lines = [f"schedule: {plan['schedule']}"]
    for g in plan["gpus"]:
        lines.append(f"{g['device']}  {g['total_gb']:g} GB ({g['total_gb'] * GB / GIB:.0f} GiB, free {g['free_gb']:g}), "
                     f"peak {g['peak_gb']:.1f} GB, headroom {g['headroom_gb']:.1f} GB (the margin for what the "
                     "plan does not count)")
        for p in g["placements"]:
            when = "" if len(p["phases"]) == 4 else f"  (phase {', '.join(map(str, p['phases']))})"
            lines.append(f"    {p['role']:<10} {p['model']:<34} {p['gb']:6.1f} GB{when}")
    for ph in plan["phases"]:
        lines.append(f"phase {ph['phase']}: {', '.join(ph['stages'])} on {', '.join(ph['devices'])}")
    lines += [f"why: {w}" for w in plan["reasoning"]]
    return "\n".join(lines)


def default_gpus(cfg: PipelineConfig) -> list[GPU]:
    """The GPUs a profile is sized for, when none are present and none are given."""
    spec = PROFILES[cfg.profile].gpus if cfg.profile in PROFILES else ""
    if not spec:
        raise ConfigError(f"profile {cfg.profile!r} runs on the CPU; pass --gpus (e.g. 1x80GB) to plan a GPU box")
    return parse_gpus(spec)

