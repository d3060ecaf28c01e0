"""The run trace (engine/trace): the file validates against the Trace Event rules, it agrees with
the results lines to 1 ms, it survives a kill, a resumed run appends to it, and its counted size
stays under the per-sample budget. No timing thresholds: only counts, sums and orders."""
import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.helpers.jsonl import read_jsonl
from kbridge.engine.trace import TraceOptions
from kbridge.engine.trace.check import problems
from kbridge.engine.trace.io import read_events, read_header
from kbridge.engine.trace.profile import _samples, load, profile

BYTES_PER_SAMPLE = 2048


@pytest.fixture(scope="module")
def traced(engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("traced")
    report = engine.run(out=out, trace=TraceOptions(out / "trace.json.gz"))
    return out, report


def test_the_trace_validates_and_carries_every_sample_stage_and_request(traced):
    out, report = traced
    events = list(read_events(out / "trace.json.gz"))
    assert problems(events) == []
    results = read_jsonl(out / "results.jsonl")
    samples = [e for e in events if e.get("name") == "sample" and e["ph"] == "X"]
    assert sorted(e["args"]["id"] for e in samples) == sorted(r["sample_id"] for r in results)
    names = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert {"generators-cpu", "scorer-cpu", "io", "lmm", "samples", "requests"} <= names
    # one LMM request span per decoded sequence (no cache hits on a fresh run)
    assert sum(1 for e in events if e.get("pid") == 3 and e["ph"] == "X") == report.lmm["lmm_calls"]
    renders = [e for e in events if e.get("pid") == 1 and e.get("name") == "render"]
    image_rows = sum(1 for r in results if r["missing"] == "image")
    assert sum(e["args"]["n"] for e in renders) == image_rows
    assert sum(e["args"].get("unet", 0) for e in renders) == pytest.approx(
        sum(r["counts"]["unet_evals"] for r in results), abs=0.01 * image_rows)
    counters = {e["name"] for e in events if e["ph"] == "C"}
    assert {"queue depth", "rows in flight", "memory MB"} <= counters
    # UNet loops and VAE decodes nested in the render calls: their counts are the results' counts
    unet = [e for e in events if e.get("pid") == 1 and "unet ×" in e.get("name", "")]
    vae = [e for e in events if e.get("pid") == 1 and e.get("name") == "vae decode"]
    assert sum(e["args"]["evals"] * e["args"]["batch"] for e in unet) == pytest.approx(
        sum(r["counts"]["unet_evals"] for r in results), abs=1e-6)
    assert sum(e["args"]["n"] for e in vae) == pytest.approx(sum(r["counts"]["vae_decodes"] for r in results))
    for e in unet + vae:
        assert any(c["tid"] == e["tid"] and c["ts"] <= e["ts"] and e["ts"] + e["dur"] <= c["ts"] + c["dur"]
                   for c in renders)


def test_per_sample_stage_spans_sum_to_the_results_timings_within_1ms(traced):
    out, _ = traced
    by_id = {r["sample_id"]: r["timings"] for r in read_jsonl(out / "results.jsonl")}
    checked = 0
    for s in _samples(load(out / "trace.json.gz")):
        timings = by_id[s["span"]["args"]["id"]]
        sums: dict = {}
        for p in s["parts"]:
            if not p["name"].startswith("wait ") and p["name"] != "sink":
                sums[p["name"]] = sums.get(p["name"], 0) + p["dur"] / 1e6
        assert set(sums) == set(timings) - {"sample"}
        for stage, sec in sums.items():
            assert sec == pytest.approx(timings[stage]["seconds"], abs=1e-3), (stage, s["span"]["args"])
            checked += 1
        # and the sample span is the sample's lifetime (admitted → written), as its results line says
        assert s["span"]["dur"] / 1e6 == pytest.approx(timings["sample"]["seconds"], abs=1e-3)
    assert checked >= 8 * 5


def test_size_per_sample_is_counted_and_under_budget(traced):
    out, report = traced
    size = (out / "trace.json.gz").stat().st_size
    assert size / report.completed <= BYTES_PER_SAMPLE, size


def test_profile_reports_devices_stages_kinds_and_a_verdict(traced):
    out, report = traced
    p = profile(out)
    assert p["samples"] == report.completed
    assert set(p["kinds"]) == {"image", "text"}
    assert sum(p["stages"][s]["critical_share"] for s in p["stages"]) == pytest.approx(1.0, abs=0.02)
    assert p["devices"]["generators-cpu"]["stages"] == ["render"]  # its UNet / VAE spans are inside the calls
    assert p["devices"]["generators-cpu"]["calls"] == sum(1 for e in read_events(out / "trace.json.gz")
                                                          if e.get("pid") == 1 and e.get("name") == "render")
    lmm = p["devices"]["lmm"]
    assert 0 < lmm["busy_share"] <= 1 and lmm["batch"]["mean"] >= 1
    top = next(iter(p["stages"]))
    assert p["verdict"][0].startswith(f"bottleneck: {top} ") and p["verdict"][1].startswith("knob: ")


KILLED = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from kbridge.engine.trace import TraceOptions, Tracer
    tr = Tracer(TraceOptions(Path(sys.argv[1]), flush_events=10**6, flush_s=60))
    for i in range(1000):
        tr._span(1, "worker", "call", i * 10, i * 10 + 5, {"i": i})
        if i % 100 == 99:
            tr.flush()  # what the writer thread does every second
        if i == 510:
            os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_killed_writer_leaves_a_loadable_gzip_and_json_array(tmp_path):
    path = tmp_path / "trace.json.gz"
    rc = subprocess.run([sys.executable, "-c", KILLED, str(path)], timeout=60).returncode
    assert rc == -signal.SIGKILL
    text = gzip.decompress(path.read_bytes()).decode()  # strict: every member complete
    events = json.loads(text.rstrip().rstrip(",") + "]")  # the array, only its closing bracket missing
    calls = [e for e in events if e.get("name") == "call"]  # all but what was buffered since the last flush
    assert len(calls) == 500 and [e["args"]["i"] for e in calls] == list(range(len(calls)))
    assert problems(events) == []
    # a tear inside the last member (power cut mid-write): the reader keeps everything before it
    torn = gzip.compress(b'{"ph":"X","name":"call","pid":1,"tid":1,"ts":99990,"dur":1},\n' * 50)
    with open(path, "ab") as f:
        f.write(torn[: len(torn) // 2])
    assert sum(1 for e in read_events(path) if e.get("name") == "call") == len(calls)


@pytest.mark.slow  # a kbridge run killed by a fault point in a subprocess, then resumed
def test_a_run_killed_mid_run_leaves_a_loadable_trace_and_the_resumed_run_appends(cfg, engine, tmp_path):
    out = tmp_path / "o"
    env = {**os.environ, "KBRIDGE_FAULT": "result@3:kill"}
    p = subprocess.run([sys.executable, "-m", "kbridge.cli", "run", "--out", str(out), "--trace", "--limit", "4"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    first = list(read_events(out / "trace.json.gz"))
    assert problems(first) == [] and read_header(out / "trace.json.gz")["runs"] == 1
    done = {r["sample_id"] for r in read_jsonl(out / "results.jsonl")}
    assert len(done) == 2
    report = engine.run(out=out, limit=4, trace=TraceOptions(out / "trace.json.gz"))  # resume
    assert report.skipped == 2 and report.completed == 2
    events = list(read_events(out / "trace.json.gz"))
    assert problems(events) == [] and read_header(out / "trace.json.gz")["runs"] == 2
    second = profile(out)
    assert second["run"] == 2 and second["samples"] == 2
    names = {e["args"]["name"] for e in events if e.get("name") == "process_name"}
    assert {"devices", "run 2 · devices", "run 2 · samples"} <= names


def test_the_report_has_the_profile_section(traced, tmp_path):
    from kbridge.engine.report import build_report

    out, _ = traced
    page = build_report(out, tmp_path / "report.html").read_text()
    assert "<section id='profile'>" in page and "bottleneck: " in page and "id='kb-timeline-data'" in page


@pytest.mark.browser
def test_the_profile_timeline_renders_and_zooms_in_headless_chromium(traced, tmp_path, monkeypatch):
    import os

    from kbridge.engine.report import profile as section

    monkeypatch.setattr(section, "WINDOW_S", 1e6)  # the whole run: a loaded machine stretches it past 20 s

    from kbridge.engine.report import build_report
    from kbridge.engine.report.browser import chromium, missing_reason

    reason = missing_reason()
    if reason and os.environ.get("KBRIDGE_REQUIRE_BROWSER"):
        pytest.fail(f"KBRIDGE_REQUIRE_BROWSER is set but there is no headless browser: {reason}")
    if reason:
        pytest.skip(f"no headless browser: {reason}")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    out, _ = traced
    page = build_report(out, tmp_path / "report.html")
    with chromium() as driver:
        driver.get(page.resolve().as_uri())
        assert [m for m in driver.get_log("browser") if m["level"] == "SEVERE"] == []
        verdict = driver.find_elements(By.CSS_SELECTOR, "#profile .verdict")
        assert len(verdict) == 2 and verdict[0].text.startswith("bottleneck: ")
        spans = driver.find_elements(By.CSS_SELECTOR, "#kb-timeline rect.tl-span")
        names = {s.get_attribute("data-name") for s in spans}
        assert {"render", "extract", "sample"} <= names
        tracks = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "#kb-timeline text.tl-track")]
        assert "lmm" in tracks and "generators-cpu" in tracks
        big = max((r for r in spans if r.get_attribute("data-name") == "extract"),  # a device span: nothing on top
                  key=lambda r: float(r.get_attribute("width")))
        ActionChains(driver).move_to_element(big).perform()
        info = driver.find_element(By.CSS_SELECTOR, "#kb-timeline .tl-info").text
        assert info.startswith(big.get_attribute("data-name"))  # the hovered span's stage and batch
        before = driver.execute_script("return document.getElementById('kb-timeline').kbView()")
        svg = driver.find_element(By.CSS_SELECTOR, "#kb-timeline svg")
        driver.execute_script("""var s = arguments[0], r = s.getBoundingClientRect();
            s.dispatchEvent(new WheelEvent('wheel', {deltaY: -100, clientX: r.left + 600, clientY: r.top + 10,
                                                     bubbles: true, cancelable: true}));""", svg)
        after = driver.execute_script("return document.getElementById('kb-timeline').kbView()")
        assert after[1] - after[0] == pytest.approx(0.8 * (before[1] - before[0]))  # zoomed in
        driver.save_screenshot(str(tmp_path / "profile.png"))
        assert (tmp_path / "profile.png").stat().st_size > 0


def test_kbridge_profile_cli_prints_the_verdict_writes_json_and_exports_plain_json(traced, tmp_path):
    from typer.testing import CliRunner

    from kbridge.cli.app import app

    out, report = traced
    res = CliRunner().invoke(app, ["profile", str(out), "--json", str(tmp_path / "p.json"),
                                   "--export", str(tmp_path / "plain.json")])
    assert res.exit_code == 0, res.output
    assert "bottleneck: " in res.output and "knob: " in res.output
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["samples"] == report.completed and p["verdict"][0].split(" — ")[0] in res.output
    plain = json.loads((tmp_path / "plain.json").read_text())  # one closed JSON object
    assert len(plain["traceEvents"]) == len(list(read_events(out / "trace.json.gz")))
    bad = CliRunner().invoke(app, ["profile", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "no trace" in bad.output
