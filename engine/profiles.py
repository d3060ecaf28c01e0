"""The named profiles: one table, one row per profile — the config each sets (section → field
overrides over the defaults of ``engine/config.py``), the GPUs it is sized for, and its LMM serving
plan. Plain data: ``config.build_config`` applies a row."""
from __future__ import annotations

from dataclasses import dataclass

_GPU_LMM = dict(device="cuda:0", dtype="bfloat16", image_max_pixels=448 * 448, max_batch=32, backend="auto",
                http_max_pixels=448 * 448)  # the serving plans' max_pixels: no larger uploads than the server uses
# vae_slicing: the refiner's fp32 decode (force_upcast) one image at a time, the plan's per-image figure
_REFERENCE_SDXL = dict(height=1024, width=1024, steps=50, high_noise_frac=0.8, guidance=5.0, dtype="float16",
                       vae_slicing=True)

QWEN_7B = "Qwen2-VL-7B-Instruct"
_SERVE_7B = dict(model=QWEN_7B, quantization="", tensor_parallel=1, max_model_len=8192, max_pixels=448 * 448,
                 execution="fused")


@dataclass(frozen=True)
class Profile:
    """A named profile: the config it sets, the GPUs it is sized for, and its LMM serving plan."""

    config: dict
    """Section → field overrides over the defaults."""
    gpus: str = ""
    """The GPUs the profile is sized for ("1x80GB", ``kbridge plan`` without --gpus); "": a CPU profile."""
    serve: dict | None = None
    """The vLLM serving plan (``lmm.serving.ServeProfile`` fields by keyword; the memory arithmetic
    is in the docs, *Serving the LMM*), or None."""


PROFILES: dict[str, Profile] = {
    "tiny": Profile(dict(generation=dict(height=64, width=64, steps=4, candidates=4, batch_size=16),
                         knowledge=dict(max_objects=4, max_attributes=2, triples=5, caption_triples=3,
                                        prompt_words=(5, 12), caption_words=(4, 10), name_chars=16),
                         medical=dict(steps=4, batch_size=16, report_words=(4, 12), few_shot_count=1))),
    "small": Profile(dict(models=dict(lmm="small", lmm_vllm_cpu="small", sdxl_base="small", sdxl_refiner="small",
                                      clip="small"),
                          # UNet micro-batch 2: the fastest exact setting of `kbridge bench render` on a
                          # quiet 2-core CPU (1.15x per candidate over 7; BENCHMARKS.md, render section);
                          # two render lanes of one thread each (the ladder's +render split 2 rung)
                          generation=dict(height=128, width=128, steps=16, batch_size=2, split=2),
                          knowledge=dict(exact=True, name_chars=24), run=dict(batch_size=2))),
    "h100": Profile(dict(lmm=_GPU_LMM, generation=dict(_REFERENCE_SDXL, device="cuda:0", batch_size=7),
                         rank=dict(device="cuda:0"), medical=dict(device="cuda:0", dtype="float16"),
                         run=dict(dense_rows=2), runtime=dict(fp16=True, max_batch=7)),
                    gpus="1x80GB", serve=dict(_SERVE_7B, devices="0", gpu_memory_utilization=0.50, max_num_seqs=64)),
    # the plan (engine/plan.py) places 4090x4: LMM replicas on GPUs 0-1, diffusion workers on 2-3,
    # the scorer beside the last; on a box with GPUs `kbridge run` applies the plan's devices
    "4090x4": Profile(dict(lmm=_GPU_LMM, generation=dict(_REFERENCE_SDXL, device="cuda:2", devices=("cuda:2", "cuda:3"),
                                                         batch_size=2),
                           rank=dict(device="cuda:3"), medical=dict(device="cuda:2", dtype="float16"),
                           run=dict(dense_rows=2), runtime=dict(fp16=True, max_batch=2)),
                      gpus="4x24GB", serve=dict(_SERVE_7B, devices="0,1", gpu_memory_utilization=0.90, max_num_seqs=32,
                                                data_parallel=2)),
    # the 72B is served by `vllm serve` over all four GPUs, which `kbridge run` starts for each LMM
    # phase and stops before render (lmm.manage_server); runs are phased
    "4090x4-72b": Profile(dict(lmm=dict(_GPU_LMM, backend="http", url="http://127.0.0.1:8000/v1", manage_server=True),
                               generation=dict(_REFERENCE_SDXL, device="cuda:0",
                                               devices=("cuda:0", "cuda:1", "cuda:2", "cuda:3"), batch_size=2),
                               rank=dict(device="cuda:0"), medical=dict(device="cuda:0", dtype="float16"),
                               run=dict(schedule="phased", dense_rows=2), runtime=dict(fp16=True, max_batch=2)),
                          gpus="4x24GB",
                          serve=dict(_SERVE_7B, model="Qwen2-VL-72B-Instruct-GPTQ-Int8", quantization="gptq",
                                     tensor_parallel=4, devices="0,1,2,3", gpu_memory_utilization=0.95,
                                     max_num_seqs=16, execution="phased")),
    "edge": Profile(dict(lmm=dict(_GPU_LMM, image_max_pixels=336 * 336, max_batch=8, http_max_pixels=336 * 336),
                         generation=dict(_REFERENCE_SDXL, device="cuda:0", batch_size=1, vae_tiling=True),
                         rank=dict(device="cuda:0"), medical=dict(device="cuda:0", dtype="float16"),
                         runtime=dict(fp16=True, max_batch=2)),
                    gpus="1x24GB", serve=dict(_SERVE_7B, model="Qwen2-VL-7B-Instruct-GPTQ-Int4", quantization="gptq",
                                              devices="0", gpu_memory_utilization=0.38, max_model_len=4096,
                                              max_num_seqs=8, max_pixels=336 * 336)),
}
"""The one profile table. GPU profiles keep the reference's SDXL settings; model directories must
be given for them."""
