"""kbridge report without a browser: the page's data against the run it was built from."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from kbridge.engine.report import ReportError, build_report, load_run
from kbridge.engine.report import graph, plots
from kbridge.engine.report.page import script_json

from tests.engine.report.conftest import PAYLOAD
from tests.helpers.jsonl import read_jsonl, write_jsonl

PNG = b"\x89PNG\r\n\x1a\n"


def page_data(html: str) -> list[dict]:
    m = re.search(r"<script type='application/json' id='kb-data'>(.*?)</script>", html, re.S)
    return json.loads(m.group(1))


def test_graph_layout_merges_entities_and_stays_in_the_box():
    triples = [{"head": "The Red Cups", "relation": "on", "tail": "table"},
               {"head": "red cup", "relation": "next to", "tail": "a spoon"},
               {"head": "spoon", "relation": "under", "tail": "Table"}]
    g = graph.layout(triples)
    assert [n[0] for n in g["n"]] == ["The Red Cups", "table", "a spoon"]  # first spelling wins
    assert sorted(tuple(sorted(e[:2])) for e in g["e"]) == [(0, 1), (0, 2), (1, 2)]
    assert [e[2] for e in g["e"]] == ["on", "next to", "under"]
    for _, x, y in g["n"]:
        assert graph.MARGIN_X <= x <= graph.WIDTH - graph.MARGIN_X and graph.MARGIN_Y <= y <= graph.HEIGHT - graph.MARGIN_Y
    assert {x for _, x, _ in g["n"]} >= {graph.MARGIN_X, graph.WIDTH - graph.MARGIN_X}  # the box is filled
    assert graph.layout(triples) == g  # fixed seed
    assert graph.layout([]) is None and graph.layout([{"head": "", "relation": "r", "tail": "x"}]) is None


def test_shape_cache_reuses_layouts_only_for_the_same_shape():
    def star(center, leaves):
        return [{"head": center, "relation": "has", "tail": leaf} for leaf in leaves]

    path = [{"head": "p", "relation": "r", "tail": "q"}, {"head": "q", "relation": "r", "tail": "s"},
            {"head": "s", "relation": "r", "tail": "t"}]
    path_rev = [{"head": "z", "relation": "r", "tail": "y"}, {"head": "w", "relation": "r", "tail": "x"},
                {"head": "y", "relation": "r", "tail": "x"}]  # the same path, listed in another order
    cache: dict = {}
    uncached = [graph.layout(t) for t in (star("man", "cdf"), star("dog", "xyz"), path, path_rev)]
    cached = [graph.layout(t, cache=cache) for t in (star("man", "cdf"), star("dog", "xyz"), path, path_rev)]
    assert sum(len(b) for b in cache["shape"].values()) == 2  # one star, one path laid out
    assert cached[0] == uncached[0] and cached[2] == uncached[2]
    for g in cached:  # reused positions keep every edge's endpoints distinct and inside the box
        pts = [(x, y) for _, x, y in g["n"]]
        assert len(set(pts)) == len(pts)
    # the reused path layout maps ends to ends: z and w (degree 1) sit where p and t sit
    ends = {tuple(cached[2]["n"][i][1:]) for i in (0, 3)}
    by_name = {n[0]: tuple(n[1:]) for n in cached[3]["n"]}
    assert {by_name["z"], by_name["w"]} == ends


def test_script_json_cannot_close_the_element():
    data = {"t": "</script><!-- & \u2028", "n": [1, 2.5, None]}
    s = script_json(data)
    assert "<" not in s and ">" not in s and "&" not in s and "\u2028" not in s
    assert json.loads(s) == data


def test_plots_are_pngs_and_absent_without_data(demo_run):
    results = read_jsonl(demo_run[0] / "results.jsonl")
    assert plots.scores(results).startswith(PNG)
    assert plots.timeline([{k: v for k, v in r.items() if k != "timings"} for r in results]) is None
    assert plots.scores([{"candidates": [{"id": "c0"}]}]) is None
    rows = [{"sample_id": "b", "timings": {"extract": {"start": 1.0, "end": 2.0}, "rank": {"start": 3, "end": 3.5},
                                           "sample": {"start": 0.2, "end": 3.6, "seconds": 3.4}}},
            {"sample_id": "a", "timings": {"extract": {"start": 0.5, "end": 1.5}, "bad": {"start": 2, "end": 1}}},
            {"sample_id": "c"}, {"sample_id": "d", "timings": {"sample": {"start": 0, "end": 1}}}]
    # "sample" is the lifetime, not a stage; a sample with no stage spans has no row
    assert plots.timeline_rows(rows) == [("b", (0.2, 3.6), [("extract", 1.0, 2.0), ("rank", 3.0, 3.5)]),
                                         ("a", None, [("extract", 0.5, 1.5)])]
    assert plots.timeline(rows).startswith(PNG)
    # spans [0, 2] and [1, 3.5]: bins [0,1] [1,2] [2,3] [3,4] hold 1, 2, 1 and 0.5 spans on average
    assert plots.occupancy([0, 1], [2, 3.5], np.array([0.0, 1, 2, 3, 4])) == pytest.approx([1, 2, 1, 0.5], abs=1e-12)
    assert plots.stage_bars([{"name": "x", "a": 1.0, "b": 2.0}], ["a", "b"], "t").startswith(PNG)


def test_page_data_matches_the_run(decorated_run, tmp_path):
    run_dir, results = decorated_run
    out = build_report(run_dir, tmp_path / "sub" / "r.html")
    html = out.read_text()
    cards = page_data(html)
    assert [c["id"] for c in cards] == [r["sample_id"] for r in results] + ["demo:99"]
    run = load_run(run_dir)
    ds = run.dataset
    for c, r in zip(cards, results):
        assert c["b"] == r["best"] and c["m"] == r["missing"]
        best_total = max(x["scores"]["total"] for x in r["candidates"])
        assert c["t"] == pytest.approx(best_total, abs=1e-4)  # the winner is the top total
        for cc, rc in zip(c["c"], r["candidates"]):
            assert cc["s"] == pytest.approx([rc["scores"][k] for k in ("semantic", "graph", "total")], abs=1e-4)
            if "image" in rc:  # a link from the page's folder to the run's PNG
                assert (out.parent / cc["img"]).resolve() == (run_dir / rc["image"]).resolve()
                assert cc["refined"] == rc["refined"]
        rec = ds.items[r["index"]]
        if r["missing"] == "text":  # the available image, linked from the dataset
            assert (out.parent / c["av"]["img"]).resolve() == (ds.root / rec["file_name"]).resolve()
        else:
            assert c["av"]["text"] == rec["captions"][0]
        assert (c["g"] is None) == (not r["knowledge"]["triples"])
    assert cards[-1]["c"] == [] and cards[-1]["err"][0]["stage"] == "load"
    lat = sorted(r["timings"]["sample"]["seconds"] for r in results)  # 2.05 s (text-), 3.55 s (image-missing)
    assert f"{np.percentile(lat, 50):.2f} / {np.percentile(lat, 95):.2f} s" in html
    assert sum(bool(c["err"]) for c in cards) == 2


def test_text_is_escaped_everywhere(decorated_run, tmp_path):
    out = build_report(decorated_run[0], tmp_path / "r.html")
    html = out.read_text()
    assert PAYLOAD not in html and "<script>window" not in html
    assert html.count("<script") == 2  # the data element and the page's own script
    assert html.count("<img") == 2  # the two plots: no markup from the data
    assert any(c.get("av", {}).get("text") == PAYLOAD for c in page_data(html))  # the data itself is intact
    assert "stage timeline" in html and "no per-stage timings" not in html


def test_no_network_resources(demo_run, tmp_path):
    html = build_report(demo_run[0], tmp_path / "r.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", html)
    assert "default-src 'none'" in html  # the page's CSP forbids any fetch beyond file: and data: images


def test_embed_inlines_thumbnails(demo_run, tmp_path):
    html = build_report(demo_run[0], tmp_path / "r.html", embed=True).read_text()
    cards = page_data(html)
    imgs = [c["img"] for s in cards for c in s["c"] if "img" in c] + [s["av"]["img"] for s in cards if "img" in s["av"]]
    assert imgs and all(i.startswith("data:image/jpeg;base64,") for i in imgs)


def test_older_run_without_timings_or_manifest(demo_run, tmp_path):
    """Runs from before per-stage timings and refined flags (and one without a manifest)."""
    import shutil

    run = tmp_path / "old"
    shutil.copytree(demo_run[0], run, ignore=shutil.ignore_patterns("report*.html", "cache.sqlite"))
    rows = read_jsonl(run / "results.jsonl")
    for r in rows:
        r.pop("timings", None)
        for c in r["candidates"]:
            c.pop("refined", None), c.pop("retriever", None)
    write_jsonl(run / "results.jsonl", rows)
    with open(run / "results.jsonl", "a") as f:
        f.write('{"sample_id": "demo:5", "ind')  # a torn last line (the run was killed)
    html = build_report(run).read_text()
    assert "no per-stage timings in this run" in html
    assert len(page_data(html)) == len(rows)
    assert f"results.jsonl:{len(rows) + 1}: not valid JSON, skipped" in html
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(ReportError, match="manifest.json: not valid JSON"):
        build_report(run)
    (run / "manifest.json").unlink()
    html = build_report(run).read_text()
    assert "no manifest.json" in html and len(page_data(html)) == len(rows)


def test_moved_dataset_is_a_note_not_a_failure(decorated_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(decorated_run[0], run)
    m = json.loads((run / "manifest.json").read_text())
    m["data"]["root"] = str(tmp_path / "gone")
    (run / "manifest.json").write_text(json.dumps(m))
    html = build_report(run).read_text()
    assert "dataset not readable" in html
    assert all(c["av"].get("unavailable") for c in page_data(html) if c["c"])


def test_cli_report(demo_run, tmp_path):
    from kbridge.cli.app import app

    r = CliRunner().invoke(app, ["report", str(demo_run[0]), "--out", str(tmp_path / "x.html")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "x.html").stat().st_size > 10_000
    r = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [f"error: run directory {tmp_path / 'nope'} does not exist"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="not a run directory"):
        build_report(tmp_path / "empty")


def test_bench_report_draws_its_plots_with_matplotlib(tmp_path):
    """``kbridge bench report`` keeps writing each report's plot under the name it gives."""
    from PIL import Image

    from kbridge.benchmarks import report as R

    res = tmp_path / "benchmarks" / "results"
    res.mkdir(parents=True)
    table = {"title": "Per-stage busy time, s", "columns": ["name", "extract", "render"],
             "rows": [{"name": "baseline", "extract": 2.0, "render": 5.0}, {"name": "kbridge", "extract": 1.0}]}
    (res / "e2e.json").write_text(json.dumps({"question": "e2e", "columns": ["name"], "rows": [],
                                              "plot": "benchmarks/results/e2e_stages.png", "tables": [table]}))
    R.write(tmp_path / "BENCHMARKS.md", res)
    with Image.open(res / "e2e_stages.png") as im:
        assert im.format == "PNG" and im.width == 900  # 9 in at 100 dpi
    assert "![e2e](benchmarks/results/e2e_stages.png)" in (tmp_path / "BENCHMARKS.md").read_text()
