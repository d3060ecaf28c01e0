"""``kbridge bench e2e --ladder``: one row per rung, each adding one change to the one before, on
the same samples in one process, every row repeated in alternating order (benchmarks/e2e.py).

Rungs: ``baseline`` (the reference's execution pattern), ``fast`` (kbridge's streaming engine,
joint writing, caption triples extracted from the captions, the UNet micro-batch of 7 that
``small`` had before), ``+parallel`` (N prompts / captions as N parallel sequences), ``+render
batch 2`` (the UNet micro-batch ``small`` has: the fastest exact variant of ``kbridge bench
render``, which also measures onnxruntime and torch.compile for render), ``+render split 2``
(two render lanes of one torch thread each instead of one lane of two), then the rungs that
change the method's outputs by design (``+refine-top-2``: only the two candidates whose
base-latent previews score best are refined and fully decoded; ``+self-triples``: caption triples
written by the caption writer, one LMM turn less). Each output-changing rung reports its gain over
the best rung that keeps the method's outputs.

The precision pair (``--no-precision`` leaves it out): the baseline and the last exact rung again
with UNets / VAE / text encoders in bfloat16 (fast on CPUs with AVX512-BF16 or AMX; the images'
fidelity is in ``kbridge bench render``), so the bf16 ratio compares both sides at one precision
(``speedup_same_precision``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from kbridge.benchmarks.e2e import (COUNTED, STAGES, amdahl_cap, split_by_missing, bench_dataset, repeated, run_baseline,
                                    run_kbridge, speedups, warm_up)
from kbridge.benchmarks.harness import LOAD_KEY, loaded, stamp
from kbridge.engine.config import build_config

RUNGS: tuple[tuple[str, dict, bool], ...] = (
    ("fast", {"knowledge": {"write": "joint", "caption_triples_from": "extracted"},
              "generation": {"batch_size": 7, "split": 1}}, False),
    ("+parallel", {"knowledge": {"write": "parallel"}}, False),
    ("+render batch 2", {"generation": {"batch_size": 2}}, False),
    ("+render split 2", {"generation": {"split": 2}}, False),
    ("+refine-top-2", {"generation": {"refine_top": 2, "preview": "linear"}}, True),
    ("+self-triples", {"knowledge": {"caption_triples_from": "self"}}, True),
)
"""(name, overrides added to the previous rung's, changes the method's outputs)."""
BF16 = {"runtime": {"backend": "torch"}, "generation": {"dtype": "bfloat16"}}
"""The precision pair's change, on both sides."""

COLUMNS = ["name", "output_changing", "samples_per_s", "samples_per_s_min", "samples_per_s_max",
           "s_per_sample_p50", "s_per_sample_p95", "critical_path_decode_tokens_per_sample",
           "generated_tokens_per_sample", "lmm_calls_per_sample", "candidates_per_sample", "unet_evals_per_sample",
           "vae_decodes_per_sample",
           "preview_decodes_per_sample", "errors", "speedup_vs_baseline", "speedup_min", "speedup_max",
           "gain_over_previous_rung", "speedup_same_precision"]


def _merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) for k, v in a.items()}
    for k, v in b.items():
        out.setdefault(k, {}).update(v)
    return out


def rung_overrides(threads: int = 0) -> list[tuple[str, dict, bool]]:
    """Each rung's cumulative overrides."""
    acc = {"run": {"threads": threads}} if threads else {}
    out = []
    for name, over, changes in RUNGS:
        acc = _merge(acc, over)
        out.append((name, acc, changes))
    return out


def precision_pair(rungs: list[tuple[str, dict, bool]], threads: int = 0) -> list[tuple[str, dict]]:
    """The baseline and the last rung keeping the method's outputs, both in bfloat16."""
    exact = [(n, o) for n, o, c in rungs if not c][-1]
    return [("baseline, bf16", _merge({"run": {"threads": threads}} if threads else {}, BF16)),
            (f"{exact[0]}, bf16", _merge(exact[1], BF16))]


def run(profile: str = "small", samples: int = 4, quick: bool = False, threads: int = 0,
        repeats: int | None = None, allow_loaded: bool = False, precision: bool = True) -> dict:
    n = 2 if quick else max(2, samples)
    repeats = repeats or (1 if quick else 3)
    rungs = rung_overrides(threads)
    pair = precision_pair(rungs, threads) if precision else []
    with tempfile.TemporaryDirectory(prefix="kbridge-ladder-") as tmp:
        tmp = Path(tmp)
        data = bench_dataset(tmp / "data", n)
        cfgs, warmed = {}, set()
        for name, over, _ in [("baseline", {"run": {"threads": threads}} if threads else {}, False), *rungs,
                              *[(nm, o, True) for nm, o in pair]]:
            backend = over.get("runtime", {}).get("backend", "torch")
            key = f"{backend}-{over.get('generation', {}).get('dtype', 'float32')}"
            if key not in warmed:  # exports and kernel warm-up happen here, before any timing
                warm_up(profile, over, tmp, key)
                warmed.add(key)
            cfgs[name] = build_config(profile, overrides=over)
        runners = [("baseline", lambda rep: run_baseline(cfgs["baseline"], data, tmp / f"baseline-{rep}"))]
        for name, _, _ in rungs:
            runners.append((name, lambda rep, nm=name: run_kbridge(cfgs[nm], data, tmp / f"{nm.strip('+')}-{rep}")))
        if pair:
            runners.append((pair[0][0], lambda rep: run_baseline(cfgs[pair[0][0]], data, tmp / f"baseline-bf16-{rep}")))
            runners.append((pair[1][0], lambda rep: run_kbridge(cfgs[pair[1][0]], data, tmp / f"kbridge-bf16-{rep}")))
        done = repeated(runners, repeats)
    changes = {"baseline": False, **{name: c for name, _, c in rungs}, **{name: True for name, _ in pair}}
    rows, splits = [], []
    for row, counts, missing in done:
        rows.append({**row, "output_changing": "yes" if changes[row["name"]] else "no"})
        splits += [{**x, LOAD_KEY: row[LOAD_KEY]} for x in split_by_missing(row["name"], counts, missing)]
    speedups(rows, allow_loaded)
    ladder = rows[:len(rows) - len(pair)]
    for prev, r in zip(ladder, ladder[1:]):  # each change's share: its rung over the one before
        r["gain_over_previous_rung"] = (r["speedup_vs_baseline"] / prev["speedup_vs_baseline"]
                                        if r["speedup_vs_baseline"] and prev["speedup_vs_baseline"] else None)
    if pair:  # both sides in bf16: the pair's own ratio (and its per-repetition spread)
        same = [dict(r) for r in rows[-2:]]
        speedups(same, allow_loaded)
        for r, s in zip(rows[-2:], same):
            r["speedup_same_precision"], r["same_precision_min"], r["same_precision_max"] = \
                s["speedup_vs_baseline"], s["speedup_min"], s["speedup_max"]
    return stamp({
        "question": "e2e_ladder", "title": f"End to end, one change at a time ({profile} profile, {n} samples)",
        "how": f"kbridge bench e2e --ladder --profile {profile} --samples {n} --repeats {repeats}"
               + (" --quick" if quick else "") + ("" if precision else " --no-precision"),
        "profile": profile, "rungs": [{"name": nm, "overrides": o, "output_changing": c} for nm, o, c in rungs],
        "columns": COLUMNS, "rows": rows, "plot": "benchmarks/results/e2e_ladder.png",
        "tables": [{"title": "Per-stage busy time per rung, s (kbridge's stages overlap)",
                    "columns": ["name", *STAGES],
                    "rows": [{"name": r["name"], **r["stage_seconds"], LOAD_KEY: r[LOAD_KEY]} for r in rows]},
                   {"title": "Counted figures per sample, by missing modality",
                    "columns": ["name", "missing", "samples", *[f"{k}_per_sample" for k in COUNTED]],
                    "rows": splits}],
        "notes": notes(rows, splits),
    })


def notes(rows: list[dict], splits: list[dict]) -> list[str]:
    base = rows[0]
    cap = amdahl_cap(base)
    out = [f"samples/s: median of {base.get('repeats', 1)} repetition(s), rows in alternating order; ratios are "
           "to the baseline row of the same run; gain_over_previous_rung is each change's share"]
    if cap:
        out.append(f"Amdahl cap: {cap:.2f}x end to end if only the LMM stages got faster (to zero)")
    if any(loaded(r) for r in rows):
        out.append("LOADED: " + ", ".join(r["name"] for r in rows if loaded(r)) + " ran on a loaded machine "
                   "(harness.is_loaded); their ratios are left out")
    pair = [r for r in rows if "speedup_same_precision" in r]  # the precision pair's rows, not rungs
    paired = {r["name"] for r in pair}
    exact = [r for r in rows[1:] if r["output_changing"] == "no" and r["speedup_vs_baseline"] is not None]
    if exact:
        best = max(exact, key=lambda r: r["samples_per_s"])
        out.append(f"best rung keeping the method's outputs: {best['name']}, {best['speedup_vs_baseline']:.2f}x "
                   f"(target >= 3x{'' if best['speedup_vs_baseline'] >= 3 else ', missed by ' + format(3 - best['speedup_vs_baseline'], '.2f') + 'x'}); "
                   f"latency p50 {best['s_per_sample_p50']:.1f} s vs baseline {base['s_per_sample_p50']:.1f} s")
        for r in rows[1:]:
            if r["output_changing"] == "yes" and r["speedup_vs_baseline"] is not None and r["name"] not in paired:
                out.append(f"{r['name']} (changes outputs): {r['samples_per_s'] / best['samples_per_s']:.2f}x over "
                           f"{best['name']}")
    if len(pair) == 2 and pair[1]["speedup_same_precision"] is not None:
        k = pair[1]
        out.append(f"both sides in bfloat16: {k['name']} {k['speedup_same_precision']:.2f}x the baseline in bfloat16 "
                   f"(min {k['same_precision_min']:.2f}, max {k['same_precision_max']:.2f}); the same-precision "
                   f"headline (the baseline itself: {pair[0]['speedup_vs_baseline']:.2f}x from bf16 alone)")
    img = {r["name"]: r for r in splits if r["missing"] == "image" and r["name"] not in paired}
    if "baseline" in img:
        b = img["baseline"]
        for name, r in img.items():
            if name != "baseline" and r["critical_path_decode_tokens_per_sample"]:
                out.append(f"{name}: image-missing critical-path decode tokens {r['critical_path_decode_tokens_per_sample']:.0f} "
                           f"vs baseline {b['critical_path_decode_tokens_per_sample']:.0f} "
                           f"(1/{b['critical_path_decode_tokens_per_sample'] / r['critical_path_decode_tokens_per_sample']:.1f}; "
                           f"target <= 1/6); generated tokens 1/{base['generated_tokens_per_sample'] / max(1, next(x for x in rows if x['name'] == name)['generated_tokens_per_sample']):.1f} "
                           "of the baseline's per sample (target <= 1/4)")
    return out
