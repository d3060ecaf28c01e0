"""The serve benchmark's load generator and tables (no servers): seeded Poisson arrivals bounded
by count and duration, and the per-rate / per-modality percentiles."""
from __future__ import annotations

import random

import pytest

from kbridge.benchmarks import serve as B


def test_arrivals_are_seeded_poisson_bounded_by_count_and_duration():
    a = B.arrivals(6, 0.5, 7)
    assert a == B.arrivals(6, 0.5, 7) and a != B.arrivals(6, 0.5, 8)
    assert len(a) == 6 and a[0] == 0.0 and a == sorted(a)
    rng = random.Random(7)  # gaps are exponential draws at the rate
    gaps = [rng.expovariate(0.5) for _ in range(5)]
    assert [b - x for x, b in zip(a, a[1:])] == pytest.approx(gaps)
    bounded = B.arrivals(6, 0.5, 7, duration_s=a[3])
    assert bounded == a[:4]  # nothing sent after the duration
    many = B.arrivals(20000, 2.0, 1)
    assert len(many) / many[-1] == pytest.approx(2.0, rel=0.05)  # the offered rate


def test_rows_count_outcomes_and_split_percentiles_by_modality():
    recs = [{"missing": m, "code": c, "start": s, "end": s + lat, "latency": lat,
             "timings": {"extract": lat / 4, **({"render": lat / 2} if m == "image" else {})}}
            for m, c, s, lat in [("image", 200, 0, 10), ("image", 200, 1, 20), ("text", 200, 2, 4),
                                 ("text", 429, 3, 0), ("image", 500, 4, 1)]]
    row, stages = B._row("kbridge", 1.0, 0.25, recs, 0.0)
    assert (row["requests"], row["completed"], row["rejected"], row["errors"]) == (5, 3, 1, 1)
    assert row["throughput_rps"] == pytest.approx(3 / 21)  # completed / (last answer - first arrival)
    assert row["p50_s"] == 10 and row["p50_image_s"] == 15 and row["p50_text_s"] == 4
    img, txt = stages
    assert (img["missing"], img["requests"], txt["requests"]) == ("image", 2, 1)
    assert img["p95_s"] == pytest.approx(19.5) and img["render_p99_s"] == pytest.approx(9.95)
    assert img["extract_s"] == "3.75 / 4.88 / 4.97" and txt["render_s"] is None
