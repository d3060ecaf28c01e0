"""``kbridge bench gpu`` on the CPU: its sections on the tiny twins (FLOPs scale with the batch,
an error or an over-budget section costs one row), and the one-line refusal without a GPU."""
import pytest
import torch


def test_full_size_and_bench_gpu_refuse_without_a_gpu_in_one_line(monkeypatch):
    from typer.testing import CliRunner

    from kbridge.cli.app import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["models", "build", "--full-size"], ["bench", "gpu", "--quick", "--no-save"]):
        r = CliRunner().invoke(app, argv)
        assert r.exit_code == 2, (argv, r.output)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "CUDA GPU" in lines[0], r.output


def test_bench_gpu_sections_on_tiny_twins_on_cpu(engine):
    """`bench gpu`'s sections on the tiny twins (CPU timing): the UNet's FLOPs double with the
    batch, decode per token is measured step by step (positive, never a clamped difference), a
    section that raises costs one error row and the next section still runs, and a section that
    does not fit the budget is skipped with a row saying so."""
    from kbridge.benchmarks import gpu as G

    s = G.Setup("cpu", quick=True, dry=True)
    rows = []
    boom = G.Section("boom", 0, lambda s: iter([1 / 0]))
    G.stream(s, rows.append, 600, only=[G.Section("unet", 0, G.unet_section), boom,
                                        G.Section("lmm", 0, G.lmm_section), G.Section("big", 1e6, G.clip_section)])
    ok = [r for r in rows if r["status"] == "ok"]
    unet = [r for r in ok if r["section"] == "unet"]
    work = [r["tflops"] * r["ms_p50"] for r in unet]  # FLOPs, up to a constant
    assert [r["batch"] for r in unet] == [1, 2] and work[1] / work[0] == pytest.approx(2.0, rel=0.01)
    err = [r for r in rows if r["section"] == "boom" and r["status"] == "error"]
    assert len(err) == 1 and err[0]["error"].startswith("ZeroDivisionError")
    decode = [r for r in ok if "decode" in r["name"]]
    assert len(decode) == 2 and all(r["ms_p50"] > 0.01 and r["gbps"] > 0 for r in decode)  # ms: no 1e-9 clamp
    assert [r["status"] for r in rows if r["section"] == "big"] == ["skipped"]
