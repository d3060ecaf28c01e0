"""Benchmarks that cannot mislead: every row's load record, the loaded rule, ratios
only between quiet rows, BENCHMARKS.md without loaded or unrecorded rows, the Amdahl cap."""
import numpy as np
import pytest

from kbridge.benchmarks import e2e as E
from kbridge.benchmarks import harness as H
from kbridge.benchmarks import report as R


def _probe(load1=0.0, other=0.0):
    return {"time": "t", "load1": load1, "busy_other": int(other > 0), "other_cores": other}


def _rec(start, end, threads=2, cores=2):
    return H.row_load(start, end, threads) | {"cores": cores, "loaded": H.is_loaded(
        {"start": start, "end": end, "own_threads": threads, "cores": cores})}


def test_loaded_rule_is_half_a_core_per_core_above_the_own_threads():
    # 2 cores, 2 own threads: the limit is 1.0 above them, at the start or at the end
    assert not H.is_loaded({"start": _probe(3.0), "end": _probe(2.5, 0.9), "own_threads": 2, "cores": 2})
    assert H.is_loaded({"start": _probe(3.01), "end": _probe(0.0), "own_threads": 2, "cores": 2})
    assert H.is_loaded({"start": _probe(0.0), "end": _probe(0.0, 1.2), "own_threads": 2, "cores": 2})
    assert not H.is_loaded({"start": _probe(5.0), "end": _probe(4.5), "own_threads": 4, "cores": 2})
    assert H.is_loaded(None) and H.is_loaded({"start": _probe()})  # no record: unknown, counted as loaded


def test_load_probe_sees_this_machine():
    p = H.load_probe(window=0.05)
    assert p["load1"] >= 0 and p["busy_other"] >= 0 and p["other_cores"] >= 0


def test_repetitions_carry_their_load_and_loaded_rows_get_no_ratio(monkeypatch):
    probes = iter([_probe(), _probe(), _probe(), _probe(9.0),  # a's 2nd... see the order below
                   _probe(), _probe(), _probe(), _probe()])
    monkeypatch.setattr(E, "load_probe", lambda: next(probes))
    monkeypatch.setattr(H, "own_threads", lambda: 2)
    speeds = {"base": [1.0, 1.2], "kb": [3.0, 3.3]}
    run = lambda name: lambda rep: ({"samples_per_s": speeds[name][rep], "errors": 0}, {}, {})  # noqa: E731
    rows = [r for r, _, _ in E.repeated([("base", run("base")), ("kb", run("kb"))], 2)]
    # order: base, kb, kb, base; the 2nd probe pair (kb's first repetition) ended loaded
    assert [len(r[H.LOAD_KEY]) for r in rows] == [2, 2]
    assert not H.loaded(rows[0]) and H.loaded(rows[1])
    E.speedups(rows)
    assert rows[1]["speedup_vs_baseline"] is None and rows[1]["speedup_min"] is None
    E.speedups(rows, allow_loaded=True)
    assert rows[1]["speedup_vs_baseline"] == pytest.approx(3.15 / 1.1)
    # per-repetition ratios pair each kb repetition with the baseline's of the same pass
    assert (rows[1]["speedup_min"], rows[1]["speedup_max"]) == (pytest.approx(3.3 / 1.2), pytest.approx(3.0 / 1.0))


def test_amdahl_cap_is_the_baseline_time_over_its_non_lmm_time():
    base = {"stage_seconds": {"load": 1.0, "extract": 7.7, "write": 15.1, "render": 55.3,
                              "candidate_knowledge": 69.1, "rank": 0.3, "io": 0.5}}
    assert E.amdahl_cap(base) == pytest.approx(149.0 / 57.1)
    notes = E._notes([{**base, "name": "baseline", "lmm_calls_per_sample": 1, "lmm_serial_turns_per_sample": 1}])
    assert "Amdahl cap: 2.61x" in notes[0]


def _report(rows, **kw):
    return {"question": "q", "title": "T", "columns": ["name", "x"], "rows": rows,
            "tables": [{"title": "extra", "columns": ["name", "x"], "rows": [{"name": "e", "x": 9.0}]}],
            "notes": ["ratio 12.9x"], **kw}


def test_benchmarks_md_leaves_out_loaded_unrecorded_and_unrepeated_sections():
    quiet = _rec(_probe(2.0), _probe(2.1))
    busy = _rec(_probe(6.0), _probe(2.1))
    ok = _report([{"name": "a", "x": 1.5, H.LOAD_KEY: quiet}, {"name": "b", "x": 2.5, H.LOAD_KEY: [quiet, quiet]}])
    md = R.render([ok])
    assert "| a | 1.50 |" in md and "| b | 2.50 |" in md and "ratio 12.9x" in md and "extra" in md
    for bad in (_report([{"name": "a", "x": 1.5, H.LOAD_KEY: quiet}, {"name": "b", "x": 2.5, H.LOAD_KEY: busy}]),
                _report([{"name": "a", "x": 1.5}]),  # measured before load records existed
                _report([{"name": "a", "x": 1.5, "repeats": 1, H.LOAD_KEY: [quiet]}])):
        md = R.render([bad])
        assert "Not measured on a quiet machine yet" in md
        assert "1.50" not in md and "12.9" not in md and "extra" not in md
    shown = R.render([_report([{"name": "b", "x": 2.5, H.LOAD_KEY: busy}])], allow_loaded=True)
    assert "| b [loaded] | 2.50 |" in shown and "--allow-loaded" in shown


def test_stamp_gives_rows_without_a_record_the_commands_span(monkeypatch):
    monkeypatch.setattr(H, "load_probe", lambda window=0.25: _probe(0.5))
    H.begin()
    rep = H.stamp({"question": "q", "columns": ["name"], "rows": [{"name": "a"}, {"name": "b", H.LOAD_KEY: "own"}]})
    assert rep["rows"][0][H.LOAD_KEY]["start"]["load1"] == 0.5 and rep["rows"][1][H.LOAD_KEY] == "own"
    assert "tables" not in rep and rep["git_sha"]


def test_render_bench_rows_on_the_tiny_twin(monkeypatch):
    """`kbridge bench render`: the profile row and a micro-batch row render the same candidates
    within the cross-setting rule; ratios only from quiet rows."""
    from kbridge.benchmarks import render as Q

    monkeypatch.setattr(Q, "load_probe", lambda: _probe(0.0))
    rep = Q.run("tiny", candidates=2, repeats=1, compile=False, only=("batch 1",))
    rows = rep["rows"]
    assert [r["name"] for r in rows] == ["profile settings (batch 16)", "batch 1"] and "tables" not in rep
    assert rows[0]["max_grey_diff"] == 0 and rows[1]["max_grey_diff"] <= Q.GREY_LEVELS
    assert rows[1]["within_cross_setting_rule"] == "yes" and rows[1]["speedup_vs_profile"] > 0
    assert rows[0]["best_agreement"] == 1.0
    assert Q.psnr(np.zeros((1, 2, 2, 3)), np.full((1, 2, 2, 3), 255.0)) == 0.0


def test_terminal_tables_print_the_loaded_mark():
    from rich.console import Console

    con = Console(record=True, width=100)
    con.print(H.rich_table({"question": "q", "columns": ["name", "x"],
                            "rows": [{"name": "b", "x": 1.0, H.LOAD_KEY: _rec(_probe(9.0), _probe())}]}))
    assert "b [loaded]" in con.export_text()
