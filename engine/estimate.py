"""Throughput and latency on paper (``kbridge plan --estimate``): ESTIMATES, never measurements.

Per sample, the counted figures of the fast fidelity (the ``counts`` of results.jsonl) times a
per-unit GPU cost, placed by layout. Every unit cost is in ``GPUS`` / ``WORK`` with its source;
where no published per-model figure was found, the cost is derived from published hardware
figures (bandwidth, tensor throughput) and one published SDXL timing, and says so.

Work per sample (fast fidelity; 7 candidates; SDXL base 40 + refiner 10 steps, guidance → 2 UNet
rows per step; counted figures of kbridge's own runs: 3 serial LMM turns and 2 + candidates
sequences for an image-missing sample, 2 turns and 2 sequences for a text-missing one):

- LMM prefill tokens: a knowledge call ≈ 250 prompt tokens + 256 vision tokens (448² image);
  decoded tokens: bounded JSON answers (``WORK``).
- Decode step time (batch of B sequences) = weight bytes per GPU / (HBM bandwidth × 0.7); a
  sequence of n tokens takes n steps; B sequences share each step (continuous batching).
- Prefill time = 2 × parameters × tokens / (tensor FLOP/s × 0.4).
- UNet step time per image = the A100 anchor × (A100 tensor FLOP/s / this GPU's), H100 capped at
  2 × A100 (Baseten: H100 "can double or triple an A100's throughput"); no gain from batching
  more images (at 1024² one image with guidance already fills the GPU: conservative).

Layouts: ``fused`` (the plan's placement: LMM replicas and diffusion workers side by side, one
GPU time-shared when there is only one), ``phased`` (every GPU does the LMM phase, then every GPU
does diffusion; per-sample latency is the whole run), ``ray`` (per node the LMM servers and
render actors split the GPUs in the ratio of their work, over N nodes; Ray's per-row overhead of
milliseconds is ignored next to seconds of GPU work).
"""
from __future__ import annotations

from dataclasses import dataclass

SOURCES = {
    "h100": "Baseten, 'Unlocking the full power of NVIDIA H100 GPUs for ML inference with TensorRT': "
            "3.35 TB/s, 989.5 TFLOPs fp16 tensor; 'H100s can double or triple an A100's throughput'",
    "4090": "valebyte.com 'Best GPUs for Stable Diffusion XL' spec table: RTX 4090 1,008 GB/s; NVIDIA Ada "
            "architecture whitepaper: 165 TFLOPs fp16 tensor (fp32 accumulate, dense)",
    "a100_sdxl": "diffusers docs, 'Accelerate inference of text-to-image diffusion models' (A100 80 GB 400 W): "
                 "SDXL base 1024², 30 steps, batch 1, bf16 + SDPA: 3.31 s per image",
    "a100": "NVIDIA A100 datasheet: 312 TFLOPs bf16 tensor (dense)",
}


@dataclass(frozen=True)
class GPUCost:
    name: str
    mem_gb: float
    bw_gbs: float
    tflops: float
    """Dense fp16/bf16 tensor TFLOP/s."""


GPUS = {"4090": GPUCost("RTX 4090", 24, 1008, 165), "h100": GPUCost("H100 SXM", 80, 3350, 989.5)}
A100_TFLOPS = 312
A100_SDXL_STEP_S = 3.31 / 30  # per step, both guidance rows, text encoders and VAE decode folded in
H100_OVER_A100_MAX = 2.0
DECODE_EFF, PREFILL_MFU = 0.7, 0.4
BATCH = 32  # sequences sharing a decode step (continuous batching under load)


@dataclass(frozen=True)
class Work:
    """LMM tokens of one call type: prefill (prompt + vision) and decoded."""

    prefill: int
    decode: int


WORK = {  # fast fidelity, 7 candidates (token sizes from the prompts' bounds; see README, GPU memory plans)
    "extract": Work(510, 300), "write_prompts": Work(800, 420), "candidate_triples": Work(510, 150),
    "write_captions": Work(800, 560),
}
LMM = {"7B": {"params": 8.3e9, "gb": 16.6}, "72B-int8": {"params": 73.4e9, "gb": 77.0}}
STEPS, CANDIDATES, P_IMAGE = 50, 7, 0.5


def _diffusion_gb() -> float:
    from kbridge.engine.plan import ACT_GB_PER_IMAGE_1024, CONTEXT_GB, SDXL_BASE_GB, SDXL_REFINER_GB, \
        VAE_FP32_PEAK_GB_1024

    return SDXL_BASE_GB + SDXL_REFINER_GB + ACT_GB_PER_IMAGE_1024 + VAE_FP32_PEAK_GB_1024 + CONTEXT_GB


DIFFUSION_GB = _diffusion_gb()


def unet_step_s(gpu: GPUCost) -> float:
    ratio = min(gpu.tflops / A100_TFLOPS, H100_OVER_A100_MAX)
    return A100_SDXL_STEP_S / ratio


def decode_step_s(gpu: GPUCost, lmm: str, tp: int) -> float:
    return LMM[lmm]["gb"] / tp / (gpu.bw_gbs * DECODE_EFF) * (1.1 if tp > 1 else 1.0)  # +10 % all-reduce


def prefill_s(gpu: GPUCost, lmm: str, tp: int, tokens: int) -> float:
    return 2 * LMM[lmm]["params"] * tokens / (gpu.tflops * 1e12 * PREFILL_MFU * tp)


def per_sample(gpu: GPUCost, lmm: str, tp: int) -> dict:
    """GPU-seconds of LMM and diffusion work, and critical-path latency, per sample kind."""
    dec = decode_step_s(gpu, lmm, tp)

    def lmm_gpu_s(calls):  # busy time of the LMM's TP group under load: B sequences share each step
        return sum(n * (prefill_s(gpu, lmm, tp, WORK[c].prefill) + WORK[c].decode * dec / BATCH) for c, n in calls)

    def turn_s(c):  # one call's latency inside a loaded batch
        return prefill_s(gpu, lmm, tp, WORK[c].prefill) + WORK[c].decode * dec

    img_calls = [("extract", 1), ("write_prompts", 1), ("candidate_triples", CANDIDATES)]
    txt_calls = [("extract", 1), ("write_captions", 1)]
    render = CANDIDATES * STEPS * unet_step_s(gpu)  # the candidates of a sample, one GPU
    return {"image": {"lmm_gpu_s": lmm_gpu_s(img_calls) * tp, "diff_gpu_s": render,
                      "latency_s": turn_s("extract") + turn_s("write_prompts") + render + turn_s("candidate_triples")},
            "text": {"lmm_gpu_s": lmm_gpu_s(txt_calls) * tp, "diff_gpu_s": 0.0,
                     "latency_s": turn_s("extract") + turn_s("write_captions")},
            "decode_step_ms": dec * 1e3, "unet_step_ms": unet_step_s(gpu) * 1e3}


def together_or_split(tp: int, G: int) -> bool:
    """Fused on several GPUs: the LMM's TP group and at least one diffusion GPU side by side."""
    return tp < G


def _mix(ps: dict, key: str) -> float:
    return P_IMAGE * ps["image"][key] + (1 - P_IMAGE) * ps["text"][key]


def estimate(gpu_key: str, gpus_per_node: int, nodes: int = 1, lmm: str = "7B") -> list[dict]:
    """Samples/s and per-sample latency (image-missing, text-missing) under each layout."""
    gpu = GPUS[gpu_key]
    # TP: the smallest power of two whose GPUs hold the weights plus ≈ 4 GB each of activations and KV
    tp = next(t for t in (1, 2, 4, 8) if LMM[lmm]["gb"] / t + 4 <= gpu.mem_gb)
    if tp > gpus_per_node:
        return [{"layout": f"the LMM needs TP {tp}: does not fit {gpus_per_node} GPU(s)", "samples_per_s": 0.0,
                 "latency_image_s": None, "latency_text_s": None, "tp": tp, "decode_step_ms": None,
                 "unet_step_ms": None, "lmm_gpu_s": None, "diff_gpu_s": None}]
    ps = per_sample(gpu, lmm, tp)
    lmm_s, diff_s = _mix(ps, "lmm_gpu_s"), _mix(ps, "diff_gpu_s")
    G = gpus_per_node * nodes
    # LMM (weights / TP + ≈ 4 GB) and one diffusion worker side by side on one GPU?
    together = LMM[lmm]["gb"] / tp + 4 + DIFFUSION_GB <= gpu.mem_gb
    lat_i, lat_t = ps["image"]["latency_s"], ps["text"]["latency_s"]
    rows = []
    if G == 1 and together:  # one GPU: LMM and SDXL time-share it
        rows.append(("fused", 1 / (lmm_s + diff_s), lat_i, lat_t))
    elif nodes == 1 and G > 1 and max(tp, G // 2) < G and together_or_split(tp, G):
        k = max(tp, G // 2)  # the plan: LMM replicas on half the GPUs, diffusion workers on the rest
        rows.append((f"fused ({k} LMM + {G - k} SDXL GPUs)", min(k / lmm_s, (G - k) / diff_s), lat_i, lat_t))
    rows.append(("phased", G / (lmm_s + diff_s), None, None))
    split = [(k, nodes * min(k / lmm_s, (gpus_per_node - k) / diff_s)) for k in range(tp, gpus_per_node, tp)]
    if together:  # every GPU renders; one LMM server per node shares a GPU with a render actor
        split.append((0, nodes * gpus_per_node / (lmm_s + diff_s)))
    if split:
        k, sps = max(split, key=lambda x: x[1])
        name = f"ray ({k} LMM + {gpus_per_node - k} SDXL GPUs per node)" if k else \
            "ray (LMM server beside render actors, every GPU renders)"
        rows.append((name, sps, lat_i, lat_t))
    return [{"layout": name, "samples_per_s": round(sps, 3), "latency_image_s": None if li is None else round(li, 1),
             "latency_text_s": None if lt is None else round(lt, 2), "tp": tp,
             "decode_step_ms": round(ps["decode_step_ms"], 2), "unet_step_ms": round(ps["unet_step_ms"], 1),
             "lmm_gpu_s": round(lmm_s, 3), "diff_gpu_s": round(diff_s, 2)} for name, sps, li, lt in rows]


BOXES = (("1×4090", "4090", 1, 1), ("4×4090", "4090", 4, 1), ("1×H100", "h100", 1, 1), ("2×8×H100", "h100", 8, 2))


def format_estimate(rows_by_box: list[tuple[str, list[dict]]]) -> str:
    lines = ["ESTIMATES on paper (engine/estimate.py), not measurements: samples/s for a 50/50 image/text-missing mix,"
             " latency per sample (phased: the whole run)",
             f"{'GPUs':<10} {'layout':<42} {'samples/s':>9} {'image s':>8} {'text s':>7}  per-unit costs"]
    for box, rows in rows_by_box:
        for r in rows:
            if r["decode_step_ms"] is None:
                lines.append(f"{box:<10} {r['layout']}")
                continue
            li = "run" if r["latency_image_s"] is None else f"{r['latency_image_s']:.1f}"
            lt = "run" if r["latency_text_s"] is None else f"{r['latency_text_s']:.2f}"
            lines.append(f"{box:<10} {r['layout']:<42} {r['samples_per_s']:>9.3f} {li:>8} {lt:>7}  "
                         f"UNet step {r['unet_step_ms']} ms, decode step {r['decode_step_ms']} ms (TP {r['tp']}), "
                         f"GPU-s/sample LMM {r['lmm_gpu_s']} SDXL {r['diff_gpu_s']}")
    lines += [f"source: {v}" for v in SOURCES.values()]
    return "\n".join(lines)
