"""Question ``gpu``: how fast is each stage on this GPU, on the real architectures at their real
sizes (full-size random twins, engine/fullsize.py: nothing is downloaded)?

The measurement is a list of sections, each run on its own (one failure loses one section's rows)
under a wall-clock budget (a section whose estimate does not fit what is left is skipped and says
so), and every row goes to ``emit`` the moment it is measured (``kbridge bench gpu --rows FILE``
and scripts/gpu_check.sh append it to a JSON-lines file and flush). Rows: the environment (versions,
TF32 state); SDXL base UNet step at 1024² fp16, eager at batch 1 and 2 and ``torch.compile``
(default mode) at batch 2 with its compile seconds; the fp32 VAE decode of one 1024² image with its
peak memory beside the plan's figure; Qwen2-VL-7B prefill (512 tokens, batch 1 and 4) and decode per
token (timed step by step inside ``generate``, never a clamped difference); CLIP ViT-L/14 towers at
batch 64; MaxSim: padded torch vs the CUDA kernel vs the CPU kernel. The full mode adds batch 7, the
refiner, and one sample's whole diffusion. Beside each time: TFLOP/s (FLOPs counted by torch's
FlopCounterMode on the same call) or GB/s of weights read per decoded token, and the peak memory
allocated during the timed calls. ``dry=True`` runs every section on the CPU with the tiny twins
(the zoo's), so the code path is exercised without a GPU; its numbers mean nothing.
"""
from __future__ import annotations

import gc
import json
import platform
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from kbridge.benchmarks.harness import stamp, summarize
from kbridge.engine import fullsize as F

COLUMNS = ["name", "batch", "ms_p50", "ms_p95", "tflops", "gbps", "items_per_s", "peak_gb"]


@dataclass(frozen=True)
class Setup:
    """Where and how big: the real sizes on a GPU, or the tiny twins on the CPU (``dry``)."""

    device: str
    quick: bool = True
    dry: bool = False

    @property
    def repeat(self) -> int:
        return 1 if self.dry else 3 if self.quick else 10

    @property
    def latent(self) -> int:
        return 16 if self.dry else 128  # 1024² images are 128² latents

    @property
    def half(self) -> torch.dtype:
        return torch.float32 if self.dry else torch.float16


@dataclass(frozen=True)
class Section:
    name: str
    seconds: float
    """What it needs on an H100 at most (a generous guess, only used to skip what cannot fit)."""
    run: Callable[[Setup], Iterator[dict]]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if torch.device(device).type == "cuda" else None


def _timed(fn, device, warmup: int, repeat: int):
    for _ in range(warmup):
        fn()
    _sync(device)
    _reset_peak(device)
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


def _row(name, batch, st, device, flops=None, bytes_moved=None, items=None, **extra) -> dict:
    t = st.median
    return {"name": name, "batch": batch, "ms_p50": 1e3 * t, "ms_p95": 1e3 * st.p95,
            "tflops": flops / t / 1e12 if flops else None, "gbps": bytes_moved / t / 1e9 if bytes_moved else None,
            "items_per_s": items / t if items else None, "peak_gb": _peak_gb(device), **extra}


def _weights_gb(m: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in m.parameters()) / 1e9


def tiny_twin(name: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The zoo's tiny twin standing in for a full-size model in the dry run (built on first use)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel, Qwen2VLForConditionalGeneration

    from kbridge.engine import zoo
    from kbridge.engine.config import build_config

    cfg = build_config("tiny")
    slot, part = (name.split(".") + [""])[:2]
    if name == "sdxl.vae":
        m = AutoencoderKL.from_pretrained(zoo.resolve("sdxl_base", cfg) / "vae")
    elif part == "unet":
        m = UNet2DConditionModel.from_pretrained(zoo.resolve(slot, cfg) / "unet")
    elif name == "lmm":
        m = Qwen2VLForConditionalGeneration.from_pretrained(zoo.resolve("lmm", cfg))
    else:
        m = CLIPModel.from_pretrained(zoo.resolve("clip", cfg))
    return m.to(dtype=dtype).eval()


def model(s: Setup, name: str, dtype: torch.dtype) -> torch.nn.Module:
    return tiny_twin(name, torch.float32) if s.dry else F.build(name, s.device, dtype).module


def unet_inputs(cfg: dict, rows: int, device, dtype=torch.float16, time_ids: int = 6, latent: int = 128) -> dict:
    """One UNet call's inputs at 1024² (latents 128²): ``rows`` = 2 × images under CFG; the refiner
    has 5 time ids (aesthetic score instead of the target size)."""
    pooled = cfg["projection_class_embeddings_input_dim"] - time_ids * cfg["addition_time_embed_dim"]
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device, dtype)  # noqa: E731
    return dict(sample=r(rows, cfg["in_channels"], latent, latent), timestep=torch.full((rows,), 500.0, device=device),
                encoder_hidden_states=r(rows, 77, cfg["cross_attention_dim"]),
                added_cond_kwargs={"text_embeds": r(rows, pooled), "time_ids": r(rows, time_ids)})


def _unet_calls(s: Setup, unet, fn, b: int, time_ids: int = 6):
    x = unet_inputs(dict(unet.config), 2 * b, s.device, next(unet.parameters()).dtype, time_ids, s.latent)
    return (lambda: fn(**x, return_dict=False)), (lambda: unet(**x, return_dict=False))


def env_section(s: Setup) -> Iterator[dict]:
    """Versions, the GPU, TF32 state, and where kbridge was imported from."""
    from importlib.metadata import PackageNotFoundError, version

    import kbridge.engine

    v = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "diffusers", "xgrammar", "pydantic", "typing_extensions", "onnx",
                "onnxruntime", "onnxruntime-gpu", "triton", "tensorrt", "torch-tensorrt", "vllm", "faiss-cpu"):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            v[pkg] = None
    cuda = torch.cuda.is_available()
    gpu = {"name": torch.cuda.get_device_name(0), "total_bytes": torch.cuda.get_device_properties(0).total_memory,
           "capability": list(torch.cuda.get_device_capability(0)), "count": torch.cuda.device_count()} if cuda else None
    yield {"name": "environment", "versions": v, "cuda": torch.version.cuda, "gpu": gpu,
           "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32,
                    "float32_matmul_precision": torch.get_float32_matmul_precision()},
           "kbridge_from": kbridge.engine.__file__, "dry_run": s.dry}


def unet_section(s: Setup, batches=(1, 2)) -> Iterator[dict]:
    unet = model(s, "sdxl_base.unet", s.half)
    for b in batches:
        call, eager = _unet_calls(s, unet, unet, b)
        with torch.inference_mode():
            flops = _flops(eager)
            st = _timed(call, s.device, 1, s.repeat)
        yield _row("sdxl_base.unet step 1024², fp16, eager", b, st, s.device, flops, items=b,
                   weights_gb=_weights_gb(unet))


def compile_section(s: Setup, b: int = 2) -> Iterator[dict]:
    """torch.compile, default mode, static shapes: the first call's seconds (compilation), then steps.
    The dry run compiles with the ``eager`` backend (Dynamo's tracing only: no C++ toolchain work)."""
    unet = model(s, "sdxl_base.unet", s.half)
    torch._dynamo.reset()
    fn = torch.compile(unet, dynamic=False, **({"backend": "eager"} if s.dry else {}))
    call, eager = _unet_calls(s, unet, fn, b)
    with torch.inference_mode():
        t0 = time.perf_counter()
        call()
        _sync(s.device)
        compile_s = time.perf_counter() - t0
        flops = _flops(eager)
        st = _timed(call, s.device, 1, s.repeat)
    yield _row("sdxl_base.unet step 1024², fp16, torch.compile default", b, st, s.device, flops, items=b,
               compile_s=compile_s, backend="eager" if s.dry else "inductor")
    torch._dynamo.reset()


def vae_section(s: Setup) -> Iterator[dict]:
    """One 1024² image decoded in fp32 (SDXL's force_upcast); the peak beside the plan's figure."""
    from kbridge.engine.plan import VAE_FP32_PEAK_GB_1024

    vae = model(s, "sdxl.vae", torch.float32)
    z = torch.randn(1, vae.config.latent_channels, s.latent, s.latent, device=s.device)
    with torch.inference_mode():
        flops = _flops(lambda: vae.decode(z))
        st = _timed(lambda: vae.decode(z), s.device, 1, s.repeat)
    w = _weights_gb(vae)
    peak = _peak_gb(s.device)
    yield _row("sdxl.vae decode 1024², fp32", 1, st, s.device, flops, items=1, weights_gb=w,
               activation_gb=None if peak is None else peak - w, plan_gb=VAE_FP32_PEAK_GB_1024)


class _StepClock:
    """A logits processor ``generate`` calls once per new token: the times between calls are the
    decode steps, measured directly (no prefill subtraction that noise can turn negative)."""

    def __init__(self, device):
        self.device, self.t = device, []

    def __call__(self, input_ids, scores):
        _sync(self.device)
        self.t.append(time.perf_counter())
        return scores


def lmm_section(s: Setup, batches=(1, 4), prompt: int = 512, new: int = 16) -> Iterator[dict]:
    from transformers import LogitsProcessorList

    if s.dry:
        prompt, new = 32, 4
    torch._dynamo.reset()
    lmm = model(s, "lmm", torch.bfloat16)
    weight_bytes = _weights_gb(lmm) * 1e9
    vocab = lmm.config.get_text_config().vocab_size
    for b in batches:
        ids = torch.randint(0, vocab - 1, (b, prompt), device=s.device)
        with torch.inference_mode():
            pre = lambda: lmm(input_ids=ids, logits_to_keep=1)  # noqa: E731
            flops = _flops(pre)
            st = _timed(pre, s.device, 1, s.repeat)
            yield _row(f"lmm prefill {prompt} tokens, bf16", b, st, s.device, flops, items=b * prompt)
            steps = []
            _reset_peak(s.device)
            for _ in range(max(1, s.repeat // 2) + 1):  # the first generate warms up
                clock = _StepClock(s.device)
                lmm.generate(input_ids=ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             logits_processor=LogitsProcessorList([clock]))
                steps.append(np.diff(clock.t))
        per = summarize([float(x) for x in np.concatenate(steps[1:])])
        yield _row(f"lmm decode per token ({new} new), bf16", b, per, s.device, None, weight_bytes, items=b)
    del lmm


def clip_section(s: Setup) -> Iterator[dict]:
    clip = model(s, "clip", s.half)
    v, t = clip.config.vision_config, clip.config.text_config
    px = torch.randn(64, 3, v.image_size, v.image_size, device=s.device, dtype=next(clip.parameters()).dtype)
    ids = torch.randint(0, t.vocab_size - 1, (64, t.max_position_embeddings), device=s.device)
    with torch.inference_mode():
        for name, fn in (("clip image tower", lambda: clip.get_image_features(pixel_values=px)),
                         ("clip text tower", lambda: clip.get_text_features(input_ids=ids))):
            yield _row(f"{name}, fp16", 64, _timed(fn, s.device, 1, s.repeat), s.device, _flops(fn), items=64)


def maxsim_section(s: Setup) -> Iterator[dict]:
    """Padded torch (bmm + amax) on the device vs the CUDA kernel vs the C++ kernel, each with its
    max |difference| from the numpy reference. The kernels are imported here, after the check's
    background build (``KBRIDGE_KERNEL_WAIT`` names a file the build writes when it is done)."""
    import os

    wait = os.environ.get("KBRIDGE_KERNEL_WAIT")
    if wait:
        deadline = time.monotonic() + float(os.environ.get("KBRIDGE_KERNEL_WAIT_S", "60"))
        while not os.path.exists(wait) and time.monotonic() < deadline:
            time.sleep(0.5)
    from kbridge.kernels.maxsim import cpu_available, cuda_status, maxsim_pairs
    from kbridge.kernels.maxsim_torch import maxsim_pairs_torch

    rng = np.random.default_rng(0)
    n_q, n_x, dim = (8, 56, 64) if s.dry else (64, 64 * 7, 768)
    q_off = np.concatenate([[0], np.cumsum(rng.integers(3, 11, n_q))])
    x_off = np.concatenate([[0], np.cumsum(rng.integers(3, 11, n_x))])
    q = rng.standard_normal((q_off[-1], dim)).astype(np.float32)
    x = rng.standard_normal((x_off[-1], dim)).astype(np.float32)
    pairs = np.array([[i, i * 7 + c] for i in range(n_q) for c in range(7)])
    ref = maxsim_pairs(q, q_off, x, x_off, pairs, True, "numpy")
    cands = [("MaxSim torch padded bmm+amax", lambda: maxsim_pairs_torch(q, q_off, x, x_off, pairs, True, s.device))]
    ok, why = cuda_status()
    cands.append(("MaxSim CUDA kernel", (lambda: maxsim_pairs(q, q_off, x, x_off, pairs, True, "cuda")) if ok else why))
    cands.append(("MaxSim C++ kernel (CPU)", (lambda: maxsim_pairs(q, q_off, x, x_off, pairs, True, "cpu"))
                  if cpu_available() else "the C++ kernel is not built"))
    for name, fn in cands:
        if isinstance(fn, str):
            yield {"name": name, "status": "not run", "reason": fn}
            continue
        err = float(np.abs(fn() - ref).max())
        yield _row(name, len(pairs), _timed(fn, s.device, 2, s.repeat), s.device, items=len(pairs),
                   max_abs_diff=err)


def refiner_section(s: Setup, batches=(1, 2, 7)) -> Iterator[dict]:
    refiner = model(s, "sdxl_refiner.unet", s.half)
    for b in batches:
        call, eager = _unet_calls(s, refiner, refiner, b, time_ids=5)
        with torch.inference_mode():
            flops = _flops(eager)
            st = _timed(call, s.device, 1, s.repeat)
        yield _row("sdxl_refiner.unet step 1024², fp16, eager", b, st, s.device, flops, items=b)


def sample_section(s: Setup, steps=(40, 10)) -> Iterator[dict]:
    """One sample's diffusion as the reference settings run it: 7 candidates in one batch, 50 steps
    (40 base + 10 refiner) under CFG, then the fp32 decode of the 7 latents, one at a time."""
    if s.dry:
        steps = (2, 1)
    base, refiner = model(s, "sdxl_base.unet", s.half), model(s, "sdxl_refiner.unet", s.half)
    vae = model(s, "sdxl.vae", torch.float32)
    xb = unet_inputs(dict(base.config), 14, s.device, next(base.parameters()).dtype, 6, s.latent)
    xr = unet_inputs(dict(refiner.config), 14, s.device, next(refiner.parameters()).dtype, 5, s.latent)

    def sample():
        for _ in range(steps[0]):
            base(**xb, return_dict=False)
        for _ in range(steps[1]):
            refiner(**xr, return_dict=False)
        for _ in range(7):
            vae.decode(torch.randn(1, vae.config.latent_channels, s.latent, s.latent, device=s.device))

    with torch.inference_mode():
        st = _timed(sample, s.device, 0, 1)
    yield _row(f"one sample's diffusion (7 candidates, {steps[0]}+{steps[1]} steps, decode)", 7, st, s.device, items=7)


def sections(quick: bool = True) -> list[Section]:
    """The check's sections in order: the quick rows first, torch.compile (minutes of compilation on
    the SDXL UNet) after them, so it can only cost itself; the full mode adds batch 7, the refiner
    and one whole sample. Each section builds its own model and drops it (peaks are its own)."""
    out = [Section("env", 5, env_section),
           Section("unet", 60, unet_section if quick else (lambda s: unet_section(s, (1, 2, 7)))),
           Section("vae", 30, vae_section),
           Section("lmm", 90, lmm_section if quick else (lambda s: lmm_section(s, (1, 4, 16), new=64))),
           Section("clip", 20, clip_section),
           Section("maxsim", 20, maxsim_section),
           Section("compile", 150, compile_section)]
    if not quick:
        out += [Section("refiner", 60, refiner_section), Section("sample", 120, sample_section)]
    return out


def _free(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def stream(setup: Setup, emit: Callable[[dict], None], budget_s: float = 1e9,
           only: list[Section] | None = None) -> None:
    """Run each section in turn, ``emit`` every row as it is measured (each tagged with its
    section). A section that raises emits one error row and the next one runs; a section whose
    estimate is more than the time left emits one skipped row."""
    t_end = time.monotonic() + budget_s
    for sec in only if only is not None else sections(setup.quick):
        left = t_end - time.monotonic()
        need = sec.seconds * (0.02 if setup.dry else 1.0)  # the tiny twins on a CPU: seconds
        if need > left:
            emit({"section": sec.name, "status": "skipped",
                  "reason": f"needs up to {sec.seconds:.0f} s, {max(0.0, left):.0f} s of the budget left"})
            continue
        t0 = time.monotonic()
        try:
            for row in sec.run(setup):
                emit({"section": sec.name, "status": row.pop("status", "ok"), **row})
        except Exception as e:  # one section's failure must not cost the others' rows
            emit({"section": sec.name, "status": "error", "error": f"{type(e).__name__}: {e}"[:2000]})
        finally:
            _free(setup.device)
        emit({"section": sec.name, "status": "done", "seconds": round(time.monotonic() - t0, 2)})


def jsonl_writer(path) -> Callable[[dict], None]:
    """``emit`` that appends each row to ``path`` as one JSON line and flushes it to disk at once."""
    def emit(row: dict) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=float) + "\n")
            f.flush()
    return emit


def run(quick: bool = False, device: str = "cuda:0", rows_path=None, budget_s: float = 1e9) -> dict:
    """Every section on ``device``; ``quick``: batches 1 / 2, torch.compile at batch 2, no refiner
    or whole-sample rows, fewer repeats (minutes, for scripts/gpu_check.sh). ``rows_path``: each
    row is also appended there the moment it is measured."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        raise F.FullSizeUnavailable(f"kbridge bench gpu needs a CUDA GPU ({device} is not available here): "
                                    "nothing was measured")
    dev = str(F.check_device(device))
    rows: list[dict] = []
    write = jsonl_writer(rows_path) if rows_path else None

    def emit(row):
        rows.append(row)
        if write:
            write(row)

    stream(Setup(dev, quick), emit, budget_s)
    notes = [f"{r['section']}: {r['status']}: {r.get('error') or r.get('reason')}" for r in rows
             if r["status"] in ("error", "skipped", "not run")]
    notes += ["full-size random twins (published configs, random weights): speed only, no quality",
              "UNet and CLIP in float16, LMM in bfloat16, VAE in float32 (SDXL's force_upcast)",
              "peak_gb: torch.cuda.max_memory_allocated during the timed calls (weights included)",
              "onnxruntime-gpu / TensorRT / torch-tensorrt rows are not part of this question: they need "
              "exported full-size graphs (kbridge export -p h100 --format tensorrt on real weights)"]
    if quick:
        notes.append("--quick: batches 1 and 2, torch.compile at batch 2, no refiner / whole-sample rows")
    measured = [r for r in rows if r["status"] == "ok" and "ms_p50" in r]
    return stamp({"question": "gpu", "title": f"Per-stage speed on {torch.cuda.get_device_name(dev)}, full-size "
                  "random twins", "how": "kbridge bench gpu" + (" --quick" if quick else ""), "columns": COLUMNS,
                  "rows": measured, "notes": notes})


def main(argv: list[str] | None = None) -> int:
    """``python -m kbridge.benchmarks.gpu ROWS.jsonl [--dry-run] [--budget S] [--full]``: the check's
    numbers-first driver (scripts/gpu_check.sh); rows are appended to ROWS.jsonl as measured."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m kbridge.benchmarks.gpu")
    ap.add_argument("rows")
    ap.add_argument("--dry-run", action="store_true", help="tiny twins on the CPU (exercises the code path)")
    ap.add_argument("--budget", type=float, default=290.0, help="seconds for all sections")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--device", default="cuda:0")
    a = ap.parse_args(argv)
    setup = Setup("cpu" if a.dry_run else a.device, quick=not a.full, dry=a.dry_run)
    if not a.dry_run and not torch.cuda.is_available():
        jsonl_writer(a.rows)({"section": "env", "status": "error", "error": "no CUDA GPU: nothing was measured"})
        return 2
    stream(setup, jsonl_writer(a.rows), a.budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
