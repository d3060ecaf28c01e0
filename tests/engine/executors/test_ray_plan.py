"""The Ray executor's pieces that need no Ray: rows as bytes, the operator layout, busy time, the
paper estimates (arithmetic checked against the formulas' inputs)."""
import pytest

from kbridge.engine.config import ConfigError, build_config
from kbridge.engine.plan import parse_gpus
from kbridge.engine.executors.ray import busy_seconds, decode, encode
from kbridge.engine.executors.ray_plan import operators, ray_layout, segments
from kbridge.engine.rows import Failure, LMMRecord, Row
from kbridge.engine.types import Candidate, Knowledge, ObjectInfo, Sample, Triple


def test_rows_travel_as_bytes_losslessly():
    from PIL import Image

    img = Image.frombytes("RGB", (5, 4), bytes(range(60)))
    row = Row(Sample("d:1", 1, "a cup", img, "image", ["cup"], "x.jpg"),
              knowledge=Knowledge([ObjectInfo("cup", 1, ["red"])], "photo", [Triple("cup", "on", "table")]),
              candidates=(Candidate("c0", "generated", image=img.rotate(90, expand=True), prompt="p", seed=7),
                          Candidate("c1", "retrieved", text="t", retriever="faiss", scores={"total": 0.5})),
              best="c0", error=Failure("rank", "boom", "Traceback"), lmm=(LMMRecord("extract", 1, 10, 5, False, 1.0, 2.0),),
              unet_evals=8.0, vae_decodes=1.0, turn=2, timings=(("load", 0.5, 0.6),), admitted=0.25,
              retrieved=True, preview_decodes=1.5, trace_calls=(("rank", "scorer pid1@n", 1.0, 2.0, {"n": 1}),))
    back = decode(encode(row))
    assert back == row  # dataclass equality; PIL images compare by mode, size and pixels
    assert back.candidates[0].image.size == (4, 5)


def test_stages_sharing_a_model_form_one_operator(cfg):
    from kbridge.engine.config import build_config

    assert [names for names, _ in segments()] == [("load",), ("extract", "write"), ("render",),
                                                  ("candidate_knowledge",), ("retrieve", "rank")]
    tiny = operators(cfg)
    assert all(op.num_gpus == 0 and 0 < op.num_cpus < 1 for op in tiny)  # CPU profile: no GPU request
    big = {op.stages: op for op in operators(build_config("4090x4"), nodes=2)}
    # 16.5 GB diffusion worker on a 24 GB card; two diffusion GPUs per node on two nodes
    assert big[("render",)].num_gpus == pytest.approx(0.69, abs=0.1) and big[("render",)].actors == 4
    assert big[("retrieve", "rank")].num_gpus < 0.1 and big[("extract", "write")].num_gpus == 0


def test_busy_seconds_count_overlapping_calls_once():
    t = [("render", 0.0, 2.0), ("render", 1.0, 3.0), ("render", 5.0, 6.0), ("rank", 1.0, 1.5)]
    assert busy_seconds(t) == {"render": pytest.approx(4.0), "rank": pytest.approx(0.5)}


def test_ray_layout_keeps_the_lmm_server_outside_ray():
    lay = ray_layout(build_config("4090x4"), 2, parse_gpus("4x24GB"))
    assert lay["lmm_server"]["devices"] == ["cuda:0", "cuda:1"] and lay["cuda_visible_devices"] == "2,3"
    render = next(op for op in lay["operators"] if op["stages"] == ["render"])
    assert render["actors"] == 4 and 0.5 < render["num_gpus"] <= 1  # one render actor per diffusion GPU
    one = ray_layout(build_config("h100"), 1, parse_gpus("1x80GB"))
    assert one["lmm_server"]["shares_gpu_with_render"] and one["cuda_visible_devices"] == "0"
    with pytest.raises(ConfigError, match="phased"):  # 72B on 24 GB cards cannot stream every stage at once
        ray_layout(build_config("4090x4-72b"), 1, parse_gpus("4x24GB"))


def test_estimates_follow_their_inputs():
    from kbridge.engine import estimate as E

    h = E.estimate("h100", 8, 2)
    step = E.A100_SDXL_STEP_S / E.H100_OVER_A100_MAX  # the H100 is capped at 2 × the A100 anchor
    assert h[0]["unet_step_ms"] == pytest.approx(step * 1e3, abs=0.1)
    ps = E.per_sample(E.GPUS["h100"], "7B", 1)
    assert ps["image"]["diff_gpu_s"] == pytest.approx(7 * 50 * step)  # 7 candidates × 50 steps, one GPU each
    assert ps["text"]["diff_gpu_s"] == 0
    mix = 0.5 * (ps["image"]["lmm_gpu_s"] + ps["image"]["diff_gpu_s"]) + 0.5 * ps["text"]["lmm_gpu_s"]
    phased = next(r for r in h if r["layout"] == "phased")
    assert phased["samples_per_s"] == pytest.approx(16 / mix, rel=1e-2) and phased["latency_image_s"] is None
    # decode is bandwidth-bound: 16.6 GB of weights per step at 70 % of 3.35 TB/s
    assert ps["decode_step_ms"] == pytest.approx(16.6 / (3350 * 0.7) * 1e3, rel=1e-6)
    four = E.estimate("4090", 4, 1)
    ray = next(r for r in four if r["layout"].startswith("ray"))
    assert ray["samples_per_s"] <= next(r for r in four if r["layout"] == "phased")["samples_per_s"]
    assert E.estimate("4090", 1, 1, "72B-int8")[0]["samples_per_s"] == 0  # TP 4 does not fit one card


def _kb(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "kbridge.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_prints_the_ray_layout_and_refuses_an_unknown_executor(tmp_path):
    p = _kb("plan", "-p", "4090x4", "--executor", "ray", "--nodes", "2", "--gpus-per-node", "4x24GB")
    assert p.returncode == 0 and "CUDA_VISIBLE_DEVICES=2,3" in p.stdout and "operator render" in p.stdout
    e = _kb("plan", "--estimate")
    assert e.returncode == 0 and e.stdout.startswith("ESTIMATES on paper") and "2×8×H100" in e.stdout
    r = _kb("run", "--executor", "nope", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: unknown executor 'nope' (known: local, ray)"]
