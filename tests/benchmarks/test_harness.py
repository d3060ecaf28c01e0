"""The benchmark harness, the reference-pattern baseline's counted figures, and the report."""
import pytest

from kbridge.benchmarks import harness as H
from kbridge.benchmarks import report as R
from tests.helpers import ROOT


def test_percentile_and_summary():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert H.percentile(xs, 50) == pytest.approx(2.5)
    assert H.percentile(xs, 100) == 4.0 and H.percentile(xs, 0) == 1.0
    assert H.percentile(list(range(101)), 95) == pytest.approx(95.0)
    s = H.summarize(xs)
    assert (s.median, s.mean, s.n) == (2.5, 2.5, 4)


def test_time_it_warms_up_and_repeats():
    calls = []
    st = H.time_it(lambda: calls.append(1), warmup=2, repeat=3)
    assert len(calls) == 5 and st.n == 3 and st.median >= 0


def test_markdown_table_formats_numbers():
    quiet = {"start": {"load1": 0.0, "other_cores": 0.0}, "end": {"load1": 0.0, "other_cores": 0.0},
             "own_threads": 1, "cores": 2}
    t = H.markdown_table([{"name": "a", "x": 12.345, "y": 0.000123, "z": None, H.LOAD_KEY: quiet},
                          {"name": "b"}], ["name", "x", "y", "z"])
    assert t.splitlines()[2] == "| a | 12.3 | 1.23e-04 | – |"
    assert t.splitlines()[3] == "| b [load unknown] | – | – | – |"  # no load record: never shown as a result


def test_benchmarks_md_is_regenerated_from_json():
    md = ROOT / "BENCHMARKS.md"
    reports = R.load_reports()
    if not reports:
        pytest.skip("no committed benchmark results yet")
    assert md.read_text() == R.render(reports), "run `kbridge bench report` after `kbridge bench …`"


def test_reference_pattern_counts(tmp_path):
    """The baseline fixture really makes the reference's calls: 4-turn chains, serial prompt
    turns, per-candidate compression and re-extraction, batch-1 SDXL, files between stages."""
    from kbridge.benchmarks.baseline import run_reference_pattern
    from kbridge.benchmarks.e2e import bench_dataset
    from kbridge.engine import data as D
    from kbridge.engine.config import build_config

    n = 2
    cfg = build_config("tiny", overrides={"generation": {"candidates": n}, "lmm": {"free_text_tokens": 8}})
    root = bench_dataset(tmp_path / "data", 2)
    ds = D.open_dataset(root, "coco", root / "missing.json")
    samples = [D.load_sample(ds, i, ds.missing[i]) for i in D.incomplete_indices(ds)]
    run = run_reference_pattern(cfg, samples, tmp_path / "work")
    assert not run.errors and set(run.best) == {"data:0", "data:1"}
    per = run.log.per_sample()
    img, txt = per["data:0"], per["data:1"]  # index 0 lacks its image, index 1 its text
    # the reference (knowledge.py, KnowledgeDrivenGenerationProto.action): image missing = 4 extraction
    # turns, scene + first prompt + (n - 1) iterative prompts + n refinements, 4 turns per candidate
    # (47 calls / 17 turns at n = 7); text missing = 4, description + captions, 4 per candidate (34 / 10)
    assert img["lmm_calls"] == 4 + 1 + n + n + 4 * n and img["lmm_serial_turns"] == 4 + 1 + n + 1 + 4
    assert txt["lmm_calls"] == 4 + 2 + 4 * n and txt["lmm_serial_turns"] == 4 + 2 + 4
    steps = cfg.generation.steps
    assert run.unet_evals["data:0"] == n * 2 * steps and run.vae_decodes["data:0"] == n
    assert (tmp_path / "work" / "data_0" / "id_1.jpg").exists()
    assert (tmp_path / "work" / "data_1" / "ranking.json").exists()
    assert run.stage_seconds["load"] > 0 and run.stage_seconds["io"] > 0
