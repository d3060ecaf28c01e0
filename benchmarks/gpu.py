"""Question ``gpu``: how fast is each stage on this GPU, on the real architectures at their real
sizes (full-size random twins, engine/fullsize.py: nothing is downloaded)?

Rows: SDXL base / refiner UNet step at batch 1 / 2 / 7 (classifier-free guidance doubles the rows),
eager and torch.compile; VAE decode at 1024²; Qwen2-VL-7B prefill and decode tokens/s at several
batch sizes; CLIP ViT-L/14 scoring; one sample's diffusion (7 candidates, 40 base + 10 refiner
steps, decode); MaxSim on the GPU: the CUDA kernel vs a padded torch composition (bmm + amax) vs
the CPU kernel. Beside each time, the derived TFLOP/s (FLOPs counted by torch's FlopCounterMode on
the same call) and, for decode, GB/s of weights read per token (like gpt-fast). Times are CUDA-
synchronised medians after warm-up. Without a CUDA GPU nothing is measured: the command refuses.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from kbridge.benchmarks.harness import stamp, summarize
from kbridge.engine import fullsize as F

COLUMNS = ["name", "batch", "ms_p50", "ms_p95", "tflops", "gbps", "items_per_s"]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, warmup: int, repeat: int):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return summarize(times)


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def _row(name, batch, st, flops=None, bytes_moved=None, items=None) -> dict:
    t = st.median
    return {"name": name, "batch": batch, "ms_p50": 1e3 * t, "ms_p95": 1e3 * st.p95,
            "tflops": flops / t / 1e12 if flops else None, "gbps": bytes_moved / t / 1e9 if bytes_moved else None,
            "items_per_s": items / t if items else None}


def unet_inputs(cfg: dict, rows: int, device, dtype=torch.float16, time_ids: int = 6, latent: int = 128) -> dict:
    """One UNet call's inputs at 1024² (latents 128²): ``rows`` = 2 × images under CFG; the refiner
    has 5 time ids (aesthetic score instead of the target size)."""
    pooled = cfg["projection_class_embeddings_input_dim"] - time_ids * cfg["addition_time_embed_dim"]
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device, dtype)  # noqa: E731
    tid = time_ids
    return dict(sample=r(rows, cfg["in_channels"], latent, latent), timestep=torch.full((rows,), 500.0, device=device),
                encoder_hidden_states=r(rows, 77, cfg["cross_attention_dim"]),
                added_cond_kwargs={"text_embeds": r(rows, pooled), "time_ids": r(rows, tid)})


def _unet_rows(slot, batches, compile, device, repeat, time_ids=6, latent=128) -> tuple[list[dict], torch.nn.Module]:
    unet = F.build(slot, device).module
    cfg, dtype = dict(unet.config), next(unet.parameters()).dtype
    rows = []
    for mode, fn in [("eager", unet)] + ([("torch.compile max-autotune", torch.compile(unet, mode="max-autotune"))]
                                         if compile else []):
        for b in batches:
            x = unet_inputs(cfg, 2 * b, device, dtype, time_ids, latent)
            call = lambda: fn(**x, return_dict=False)  # noqa: E731
            with torch.inference_mode():
                flops = _flops(lambda: unet(**x, return_dict=False))
                st = _timed(call, device, 3 if mode != "eager" else 1, repeat)
            rows.append(_row(f"{slot} step, {mode}", b, st, flops, items=b))
    return rows, unet


def _vae_rows(device, repeat, latent=128) -> tuple[list[dict], torch.nn.Module]:
    vae = F.build("sdxl.vae", device, torch.float32).module  # force_upcast: SDXL's VAE decodes in fp32
    z = torch.randn(1, vae.config.latent_channels, latent, latent, device=device)
    with torch.inference_mode():
        flops = _flops(lambda: vae.decode(z))
        st = _timed(lambda: vae.decode(z), device, 1, repeat)
    return [_row("sdxl.vae decode 1024², fp32", 1, st, flops, items=1)], vae


def _lmm_rows(batches, prompt: int, new: int, device, repeat) -> list[dict]:
    lmm = F.build("lmm", device, torch.bfloat16).module
    weight_bytes = sum(p.numel() * p.element_size() for p in lmm.parameters())
    rows = []
    vocab = lmm.config.get_text_config().vocab_size
    for b in batches:
        ids = torch.randint(0, vocab - 1, (b, prompt), device=device)
        with torch.inference_mode():
            pre = lambda: lmm(input_ids=ids, logits_to_keep=1)  # noqa: E731
            flops = _flops(pre)
            st = _timed(pre, device, 1, repeat)
            rows.append(_row(f"lmm prefill {prompt} tokens", b, st, flops, items=b * prompt))
            gen = lambda: lmm.generate(input_ids=ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)  # noqa: E731
            sg = _timed(gen, device, 1, max(1, repeat // 2))
        per = type(sg)(max(1e-9, sg.median - st.median) / new, max(1e-9, sg.p95 - st.median) / new, 0.0, 0.0, sg.n)
        rows.append(_row(f"lmm decode (per token, {new} new)", b, per, None, weight_bytes, items=b))
    del lmm
    return rows


def _clip_rows(device, repeat) -> list[dict]:
    clip = F.build("clip", device).module
    v, t = clip.config.vision_config, clip.config.text_config
    px = torch.randn(64, 3, v.image_size, v.image_size, device=device, dtype=next(clip.parameters()).dtype)
    ids = torch.randint(0, t.vocab_size - 1, (64, t.max_position_embeddings), device=device)
    rows = []
    with torch.inference_mode():
        for name, fn in (("clip image tower", lambda: clip.get_image_features(pixel_values=px)),
                         ("clip text tower", lambda: clip.get_text_features(input_ids=ids))):
            rows.append(_row(name, 64, _timed(fn, device, 1, repeat), _flops(fn), items=64))
    return rows


def _sample_row(base, refiner, vae, device, latent=128, steps=(40, 10)) -> dict:
    """One sample's diffusion as the reference settings run it: 7 candidates in one batch, 50 steps
    (40 base + 10 refiner) under CFG, then the fp32 decode of the 7 latents."""
    dt = next(base.parameters()).dtype
    xb = unet_inputs(dict(base.config), 14, device, dt, 6, latent)
    xr = unet_inputs(dict(refiner.config), 14, device, dt, 5, latent)

    def sample():
        for _ in range(steps[0]):
            base(**xb, return_dict=False)
        for _ in range(steps[1]):
            refiner(**xr, return_dict=False)
        vae.decode(torch.randn(7, vae.config.latent_channels, latent, latent, device=device))

    with torch.inference_mode():
        st = _timed(sample, device, 0, 1)
    return _row(f"one sample's diffusion (7 candidates, {steps[0]}+{steps[1]} steps, decode)", 7, st, items=7)


def _maxsim_rows(device, repeat) -> tuple[list[dict], list[str]]:
    from kbridge.kernels.maxsim import cpu_available, cuda_status, maxsim_pairs
    from kbridge.kernels.maxsim_torch import maxsim_pairs_torch

    rng = np.random.default_rng(0)
    n_q, n_x, dim = 64, 64 * 7, 768
    q_off = np.concatenate([[0], np.cumsum(rng.integers(3, 11, n_q))])
    x_off = np.concatenate([[0], np.cumsum(rng.integers(3, 11, n_x))])
    q = rng.standard_normal((q_off[-1], dim)).astype(np.float32)
    x = rng.standard_normal((x_off[-1], dim)).astype(np.float32)
    pairs = np.array([[i, i * 7 + c] for i in range(n_q) for c in range(7)])
    ref = maxsim_pairs(q, q_off, x, x_off, pairs, True, "numpy")
    rows, notes = [], []
    cands = [("MaxSim torch padded bmm+amax (GPU)", lambda: maxsim_pairs_torch(q, q_off, x, x_off, pairs, True, device))]
    if cuda_status()[0]:
        cands.append(("MaxSim CUDA kernel", lambda: maxsim_pairs(q, q_off, x, x_off, pairs, True, "cuda")))
    else:
        notes.append(f"MaxSim CUDA kernel not run: {cuda_status()[1]}")
    if cpu_available():
        cands.append(("MaxSim C++ kernel (CPU)", lambda: maxsim_pairs(q, q_off, x, x_off, pairs, True, "cpu")))
    for name, fn in cands:
        err = float(np.abs(fn() - ref).max())
        rows.append(_row(name, len(pairs), _timed(fn, device, 2, repeat), items=len(pairs)))
        notes.append(f"{name}: max |diff| vs numpy reference {err:.2e}")
    return rows, notes


def run(quick: bool = False, device: str = "cuda:0") -> dict:
    """Every row above on ``device``; ``quick``: batches 1 / 2, no compile rows, no refiner or
    whole-sample rows, fewer repeats (minutes, for scripts/gpu_check.sh)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        raise F.FullSizeUnavailable(f"kbridge bench gpu needs a CUDA GPU ({device} is not available here): "
                                    "nothing was measured")
    dev = F.check_device(device)
    repeat = 3 if quick else 10
    batches = (1, 2) if quick else (1, 2, 7)
    rows, notes = [], []
    r, base = _unet_rows("sdxl_base.unet", batches, not quick, dev, repeat)
    rows += r
    r, vae = _vae_rows(dev, repeat)
    rows += r
    if not quick:
        r, refiner = _unet_rows("sdxl_refiner.unet", batches, False, dev, repeat, time_ids=5)
        rows += r
        rows.append(_sample_row(base, refiner, vae, dev))
        del refiner
    del base, vae
    torch.cuda.empty_cache()
    rows += _lmm_rows((1, 4) if quick else (1, 4, 16), 512, 16 if quick else 64, dev, repeat)
    torch.cuda.empty_cache()
    rows += _clip_rows(dev, repeat)
    r, n = _maxsim_rows(dev, repeat)
    rows += r
    notes += n
    notes += ["full-size random twins (published configs, random weights): speed only, no quality",
              "UNet and CLIP in float16, LMM in bfloat16, VAE in float32 (SDXL's force_upcast)",
              "onnxruntime-gpu / TensorRT / torch-tensorrt rows are not part of this question: they need "
              "exported full-size graphs (kbridge export -p h100 --format tensorrt on real weights)"]
    if quick:
        notes.append("--quick: batches 1 and 2, no torch.compile / refiner / whole-sample rows")
    name = torch.cuda.get_device_name(dev)
    return stamp({"question": "gpu", "title": f"Per-stage speed on {name}, full-size random twins",
                  "how": "kbridge bench gpu" + (" --quick" if quick else ""), "columns": COLUMNS, "rows": rows,
                  "notes": notes})
