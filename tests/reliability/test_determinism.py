"""Determinism (the promise in tests/helpers/promise.py and the README), a stage's unexpected exception,
and load. In-process runs of the real pipeline: tiny dense models, the fake LMM."""
from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from tests.helpers import promise
from tests.helpers.jsonl import read_jsonl
from tests.helpers.fake_lmm import FakeLMM
from kbridge.engine import faults
from kbridge.engine.api import Engine
from tests.reliability.relib import check_run_dir, plain_dataset


def _engine(cfg, loaded, gen=None, **run):
    g = dataclasses.replace(cfg.generation, **{"candidates": 2, "steps": 1, **(gen or {})})
    eng = Engine(dataclasses.replace(cfg, generation=g, run=dataclasses.replace(cfg.run, **run)))
    eng.loaders.update(lmm=lambda _: FakeLMM(), scorer=lambda _: loaded.scorer, generators=lambda _: loaded.generators)
    return eng


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return plain_dataset(tmp_path_factory.mktemp("det") / "ds", 6, seed=5)


@pytest.fixture(scope="module")
def runs(cfg, dense, data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    root, missing = data
    settings = {"base": {}, "again": {}, "batch_size 1": {"batch_size": 1}, "rows_in_flight 1": {"rows_in_flight": 1},
                "seed 7": {"seed": 7}, "threads 1": {"threads": 1}, "threads 2": {"threads": 2}}
    before = torch.get_num_threads()
    out = {}
    try:
        for name, run in settings.items():
            run = {"batch_size": 4, "rows_in_flight": 2, **run}
            n = 2 if name.startswith("threads") else 6  # two threads on a busy 2-core machine are slow
            rep = _engine(cfg, dense, **run).run(data=root, fmt="coco", missing=missing, out=tmp / name, limit=n)
            assert rep.completed == n and not rep.errors, rep.errors
            print(f"{name}: {rep.wall_seconds} s {rep.stage_seconds}")
            out[name] = tmp / name
    finally:
        torch.set_num_threads(before)
    return out


def test_same_settings_give_byte_identical_results(runs):
    promise.same_settings(runs["base"], runs["again"])


@pytest.mark.parametrize("other", ["batch_size 1", "rows_in_flight 1"])
def test_other_batch_sizes_and_in_flight_limits_keep_the_cross_setting_rule(runs, other):
    ties = promise.cross_settings(runs["base"], runs[other])
    print(f"{other}: near-ties {ties}")


def test_other_thread_counts_keep_the_cross_setting_rule_and_are_recorded(runs):
    promise.cross_settings(runs["threads 1"], runs["threads 2"])
    for n in (1, 2):
        assert json.loads((runs[f"threads {n}"] / "manifest.json").read_text())["threads"] == n


def test_different_seeds_give_different_candidates(runs):
    a, b = promise.rows(runs["base"]), promise.rows(runs["seed 7"])
    assert set(a) == set(b)
    for sid in a:
        ca = [(c.get("prompt"), c.get("text"), c.get("seed")) for c in a[sid]["candidates"]]
        cb = [(c.get("prompt"), c.get("text"), c.get("seed")) for c in b[sid]["candidates"]]
        assert ca != cb, sid


@pytest.mark.parametrize("verbose", [False, True], ids=["one line", "-v: traceback"])
def test_an_exception_inside_a_stage_fails_that_sample_not_the_run(cfg, dense, data, tmp_path, monkeypatch, verbose):
    root, missing = data
    monkeypatch.setenv("KBRIDGE_FAULT", "render@2:raise")
    faults.reset()
    kb_log = logging.getLogger("kbridge")
    level = kb_log.level
    kb_log.setLevel(logging.DEBUG if verbose else logging.WARNING)
    try:
        rep = _engine(cfg, dense).run(data=root, fmt="coco", missing=missing, out=tmp_path / "o")
    finally:
        kb_log.setLevel(level)
        faults.reset()
    [err] = read_jsonl(tmp_path / "o" / "errors.jsonl")
    assert rep.completed == 5 and len(rep.errors) == 1
    assert err["stage"] == "render" and err["error"] == "internal error in render: RuntimeError: injected fault at render"
    assert ("Traceback" in err.get("traceback", "")) == verbose
    assert len(check_run_dir(tmp_path / "o")) == 5


def test_load_100_samples_every_one_accounted_for(cfg, dense, tmp_path):
    root, missing = plain_dataset(tmp_path / "ds", 100, seed=1)
    eng = _engine(cfg, dense, rows_in_flight=8)
    rep = eng.run(data=root, fmt="coco", missing=missing, out=tmp_path / "o")
    rows = check_run_dir(tmp_path / "o")
    errors = read_jsonl(tmp_path / "o" / "errors.jsonl") if (tmp_path / "o" / "errors.jsonl").exists() else []
    assert rep.incomplete == 100 and rep.completed + len(rep.errors) == 100
    assert len(rows) + len(errors) == 100 and len(rows) == rep.completed
    assert set(rows) | {e["sample_id"] for e in errors} == {f"ds:{i}" for i in range(100)}
    assert all(len(r["candidates"]) >= 2 for r in rows.values())
