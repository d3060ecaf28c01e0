"""Benchmark plumbing: repeated rows in alternating order, the ladder's cumulative
rungs, CPU vector extensions in the machine stamp."""
from kbridge.benchmarks.e2e import repeated
from kbridge.benchmarks.harness import cpu_vector
from kbridge.benchmarks.ladder import notes, precision_pair, rung_overrides
from kbridge.engine.config import build_config


def test_cpu_vector_extensions_from_cpuinfo():
    info = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw amx_tile amx_bf16 avx512_vnni\n"
    assert cpu_vector(info) == "avx2 avx512f avx512bw avx512_vnni amx_tile amx_bf16"
    assert cpu_vector("flags\t: fpu sse2 avx\n") == ""


def test_rows_repeat_in_alternating_order_and_report_the_median():
    order, speeds = [], {"a": [1.0, 3.0, 2.0], "b": [5.0, 4.0, 6.0]}

    def runner(name):
        def fn(rep):
            order.append(name)
            return {"samples_per_s": speeds[name][rep], "errors": rep % 2, "rep": rep}, {}, {}
        return fn

    out = repeated([("a", runner("a")), ("b", runner("b"))], 3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    a, b = out[0][0], out[1][0]
    assert (a["samples_per_s"], a["samples_per_s_min"], a["samples_per_s_max"], a["rep"]) == (2.0, 1.0, 3.0, 2)
    assert (b["samples_per_s"], b["rep"], b["repeats"]) == (5.0, 0, 3)
    assert a["errors"] == 1  # summed over the repetitions


def test_ladder_rungs_are_cumulative_and_valid():
    rungs = rung_overrides()
    names = [n for n, _, _ in rungs]
    assert names[:4] == ["fast", "+parallel", "+render batch 2", "+render split 2"]
    by = dict((n, o) for n, o, _ in rungs)
    assert by["fast"]["generation"] == {"batch_size": 7, "split": 1}  # whatever the profile's defaults
    assert by["+render batch 2"]["knowledge"]["write"] == "parallel" and by["+render batch 2"]["generation"]["batch_size"] == 2
    assert by["+render split 2"]["generation"] == {"batch_size": 2, "split": 2}
    assert [c for _, _, c in rungs][:4] == [False] * 4 and rungs[-1][2]
    # the precision pair: the baseline and the last exact rung, both in bf16 and nothing else changed
    (bn, bo), (kn, ko) = precision_pair(rungs, threads=1)
    assert (bn, kn) == ("baseline, bf16", "+render split 2, bf16")
    assert bo == {"run": {"threads": 1}, "runtime": {"backend": "torch"}, "generation": {"dtype": "bfloat16"}}
    assert ko["generation"] == {"batch_size": 2, "split": 2, "dtype": "bfloat16"}
    assert ko["knowledge"] == by["+render split 2"]["knowledge"]
    for _, over, _ in rungs:
        build_config("small", overrides=over)  # every rung is a valid configuration
    for _, over in precision_pair(rungs):
        assert build_config("small", overrides=over).generation.dtype == "bfloat16"


def test_ladder_notes_compare_output_changing_rungs_to_the_best_exact_one():
    row = lambda name, sps, ch: {"name": name, "samples_per_s": sps, "speedup_vs_baseline": sps,  # noqa: E731
                                 "output_changing": ch, "s_per_sample_p50": 10.0, "generated_tokens_per_sample": 100.0}
    rows = [row("baseline", 1.0, "no"), row("fast", 2.0, "no"), row("+parallel", 2.5, "no"), row("+x", 3.0, "yes")]
    rows[0]["generated_tokens_per_sample"] = 500.0
    split = [{"name": "baseline", "missing": "image", "critical_path_decode_tokens_per_sample": 1200.0},
             {"name": "+parallel", "missing": "image", "critical_path_decode_tokens_per_sample": 200.0}]
    text = "\n".join(notes(rows, split))
    assert "+parallel, 2.50x (target >= 3x, missed by 0.50x)" in text
    assert "+x (changes outputs): 1.20x over +parallel" in text
    assert "1/6.0" in text and "1/5.0" in text


def test_ladder_notes_give_the_same_precision_ratio_apart_from_the_rungs():
    row = lambda name, sps, ch: {"name": name, "samples_per_s": sps, "speedup_vs_baseline": sps,  # noqa: E731
                                 "output_changing": ch, "s_per_sample_p50": 10.0, "generated_tokens_per_sample": 100.0}
    rows = [row("baseline", 1.0, "no"), row("fast", 2.0, "no"), row("baseline, bf16", 1.5, "yes"),
            row("fast, bf16", 3.3, "yes")]
    rows[2].update(speedup_same_precision=1.0, same_precision_min=1.0, same_precision_max=1.0)
    rows[3].update(speedup_same_precision=2.2, same_precision_min=1.9, same_precision_max=2.5)
    text = "\n".join(notes(rows, []))
    assert "both sides in bfloat16: fast, bf16 2.20x the baseline in bfloat16 (min 1.90, max 2.50)" in text
    assert "bf16 alone)" in text and "1.50x from bf16" in text
    assert "(changes outputs)" not in text  # the pair is not an output-changing rung over the best exact one
