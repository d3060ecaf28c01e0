"""kbridge report in a real headless Chromium (Debian's chromium + chromium-driver, via selenium).

Skipped with the reason where they are not installed; .ci/run installs them, so CI never skips.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from kbridge.engine.report import build_report

from tests.engine.report.conftest import PAYLOAD
from tests.helpers.jsonl import read_jsonl

pytestmark = pytest.mark.browser

ALL_IMAGES = """return Array.from(document.images).map(i => [i.getAttribute('src').slice(0, 80),
                                                           i.complete && i.naturalWidth > 0])"""


def open_page(driver, page: Path) -> list:
    """Load ``page``; returns the console messages of level SEVERE logged while it loaded."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(page.resolve().as_uri())
    driver.execute_script("return document.readyState")
    return [m for m in driver.get_log("browser") if m["level"] == "SEVERE"]


def cards(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#cards article.card")


def test_demo_report_cards_images_winner_screenshot(browser, demo_run, tmp_path):
    from selenium.webdriver.common.by import By

    run_dir, _ = demo_run
    results = read_jsonl(run_dir / "results.jsonl")
    page = build_report(run_dir, tmp_path / "report.html")
    assert open_page(browser, page) == []
    got = cards(browser)
    assert len(got) == len(results)
    images = browser.execute_script(ALL_IMAGES)
    n_cand_images = sum(1 for r in results for c in r["candidates"] if c.get("image"))
    n_avail = sum(r["missing"] == "text" for r in results)
    assert [src for src, ok in images if not ok] == []  # every image resolves: thumbnails and plots
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cards img")) == n_cand_images + n_avail
    assert len(browser.find_elements(By.CSS_SELECTOR, "img.plot")) >= 1
    for card, r in zip(got, results):
        assert card.get_attribute("data-sample") == r["sample_id"]
        winners = card.find_elements(By.CSS_SELECTOR, ".cand.winner")
        assert [w.get_attribute("data-cand") for w in winners] == [r["best"]]
        assert "★ best" in winners[0].text
        others = card.find_elements(By.CSS_SELECTOR, ".cand:not(.winner)")
        assert len(others) == len(r["candidates"]) - 1
        border = browser.execute_script("return getComputedStyle(arguments[0]).borderTopColor", winners[0])
        assert border == "rgb(46, 139, 87)"
        assert all(browser.execute_script("return getComputedStyle(arguments[0]).borderTopColor", o) != border
                   for o in others)
        n_graphs = len(card.find_elements(By.CSS_SELECTOR, "figure.graph svg"))
        assert n_graphs == bool(r["knowledge"]["triples"]) + bool(
            next(c for c in r["candidates"] if c["id"] == r["best"])["triples"])
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    from PIL import Image

    with Image.open(shot) as im:
        assert im.format == "PNG" and im.width >= 1000


def test_filters_sort_and_timeline(browser, decorated_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    run_dir, results = decorated_run
    page = build_report(run_dir, tmp_path / "report.html")
    assert open_page(browser, page) == []
    n = len(results) + 1  # + the sample that failed to load
    assert len(cards(browser)) == n
    assert browser.find_element(By.CSS_SELECTOR, "img.plot[alt='per-sample stage timeline']").get_property("naturalWidth") > 0
    Select(browser.find_element(By.ID, "f-missing")).select_by_value("image")
    shown = cards(browser)
    assert len(shown) == sum(r["missing"] == "image" for r in results) < n
    assert {c.get_attribute("data-missing") for c in shown} == {"image"}
    browser.find_element(By.ID, "f-errors").click()
    failed = next(r for r in results if r["missing"] == "image")["sample_id"]  # its error line: decorated_run
    assert [c.get_attribute("data-sample") for c in cards(browser)] == [failed]
    Select(browser.find_element(By.ID, "f-missing")).select_by_value("all")
    assert sorted(c.get_attribute("data-sample") for c in cards(browser)) == sorted([failed, "demo:99"])
    browser.find_element(By.ID, "f-errors").click()
    Select(browser.find_element(By.ID, "f-sort")).select_by_value("total-desc")
    best = {r["sample_id"]: max(c["scores"]["total"] for c in r["candidates"]) for r in results}
    order = [c.get_attribute("data-sample") for c in cards(browser)]
    # the page sorts by the totals it shows (4 decimals): near-ties keep their run order
    shown_totals = [round(best[s], 4) for s in order[:-1]]
    assert sorted(order[:-1]) == sorted(best) and shown_totals == sorted(shown_totals, reverse=True)
    assert order[-1] == "demo:99"
    refined = browser.find_elements(By.CSS_SELECTOR, ".badge.refined")
    assert len(refined) == sum(c.get("refined") is True for r in results for c in r["candidates"])
    assert [b.text for b in browser.find_elements(By.CSS_SELECTOR, ".badge.retrieved")] == ["retrieved · faiss"]
    assert len(browser.find_elements(By.CSS_SELECTOR, ".badge.generated")) == \
        sum(len(r["candidates"]) for r in results) - 1


def test_injected_script_caption_does_not_execute(browser, decorated_run, tmp_path):
    from selenium.webdriver.common.by import By

    page = build_report(decorated_run[0], tmp_path / "report.html")
    assert open_page(browser, page) == []  # an injected <img src=x> would log a failed load
    assert browser.execute_script("return typeof window.__kbPwned") == "undefined"
    texts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".atext, .ctext")]
    assert texts.count(PAYLOAD) == 2  # the dataset caption and the candidate caption, as text
    labels = browser.execute_script(
        "return Array.from(document.querySelectorAll('svg text title')).map(t => t.textContent)")
    assert labels.count(PAYLOAD) == 2  # the triple's node and its relation (whole, as tooltips)
    errs = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "ul.errors li")]
    assert f"rank: injected: {PAYLOAD}" in errs
    assert browser.execute_script("return document.querySelectorAll('#cards script, #cards img[src=\"x\"]').length") == 0


def test_pagination_of_a_larger_run(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from kbridge.benchmarks.report_page import synthetic_run

    run_dir = synthetic_run(tmp_path, 120)
    page = build_report(run_dir)
    assert open_page(browser, page) == []
    seen = []
    for expect in (50, 50, 20):
        got = cards(browser)
        assert len(got) == expect
        seen += [c.get_attribute("data-sample") for c in got]
        assert all(ok for _, ok in browser.execute_script(ALL_IMAGES))
        nxt = browser.find_element(By.ID, "next")
        if expect == 20:
            assert not nxt.is_enabled()
        else:
            nxt.click()
    assert seen == [f"synth:{i}" for i in range(120)]
    assert browser.find_element(By.ID, "pageinfo").text == "page 3 of 3 · 120 of 120 samples"


def test_embedded_thumbnails_load(browser, demo_run, tmp_path):
    page = build_report(demo_run[0], tmp_path / "embedded.html", embed=True)
    assert open_page(browser, page) == []
    images = browser.execute_script(ALL_IMAGES)
    assert images and all(src.startswith("data:") and ok for src, ok in images)
