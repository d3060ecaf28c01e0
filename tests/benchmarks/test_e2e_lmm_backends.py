"""``kbridge bench e2e --lmm-backends hf,vllm``: the vLLM row's code path, dry (the lead measures it
from .venv-vllm on a quiet machine). Where vLLM is missing the command is one line and exit 2
before any work; with vLLM the row runs kbridge with ``lmm.backend = "vllm"``, after its own
untimed warm-up, and is named in the report's ``how``."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kbridge.benchmarks import e2e
from kbridge.engine.config import ConfigError


def test_hf_adds_no_row_and_an_unknown_backend_is_one_error():
    assert e2e.lmm_rows(("hf",)) == []
    with pytest.raises(ConfigError, match="unknown LMM backend.*tpu.*known: hf, vllm"):
        e2e.lmm_rows(("hf", "tpu"))


def test_without_vllm_the_command_is_one_line_before_any_work(monkeypatch):
    from kbridge.cli.app import app

    monkeypatch.setattr("kbridge.engine.lmm.vllm_local.vllm_platform", lambda: "")
    called = []
    monkeypatch.setattr(e2e, "bench_dataset", lambda *a: called.append(a))
    res = CliRunner().invoke(app, ["bench", "e2e", "--quick", "--lmm-backends", "hf,vllm", "--no-save"])
    assert res.exit_code == 2 and not called
    assert "needs vLLM in this environment" in res.output and ".venv-vllm" in res.output


def test_the_vllm_row_runs_kbridge_on_the_vllm_backend(monkeypatch, tmp_path):
    """The row wiring, with every measured call recorded instead of run (no models, no vLLM)."""
    monkeypatch.setattr("kbridge.engine.lmm.vllm_local.vllm_platform", lambda: "cpu")
    seen: dict[str, object] = {}

    def fake_kbridge(cfg, data, out, executor=None):
        name = f"lmm={cfg.lmm.backend} executor={'barrier' if executor else 'stream'}"
        seen[name] = cfg
        row = {"name": "kbridge", "samples": 2, "errors": 0, "wall_s": 1.0, "samples_per_s": 2.0,
               "stage_seconds": {}}
        return row, {}, {}

    warmed = []
    monkeypatch.setattr(e2e, "run_kbridge", fake_kbridge)
    monkeypatch.setattr(e2e, "run_baseline", lambda cfg, data, work: fake_kbridge(cfg, data, work, executor=None))
    monkeypatch.setattr(e2e, "warm_up", lambda profile, over, tmp, tag: warmed.append((tag, over)))
    monkeypatch.setattr(e2e, "single", lambda cfg, tmp: [])
    monkeypatch.setattr(e2e, "_notes", lambda rows: [])
    rep = e2e.run("tiny", quick=True, lmm_backends=("hf", "vllm"))
    names = [r["name"] for r in rep["rows"]]
    assert names[-1] == "kbridge, LMM on vllm (in-process)" and names[-2] == "kbridge", names
    assert seen["lmm=vllm executor=stream"].lmm.backend == "vllm"
    assert ("lmm-vllm", {"lmm": {"backend": "vllm"}}) in warmed  # its engine start is never timed
    assert rep["how"].endswith("--quick --lmm-backends hf,vllm")
