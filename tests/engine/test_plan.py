"""The GPU memory plan, by arithmetic (no GPU needed): placements, memory and schedules."""
import json
import struct
import subprocess
import sys

import pytest

from kbridge.engine.config import PROFILES, ConfigError, build_config
from kbridge.engine.lmm.serving import SERVE_PROFILES
from kbridge.engine.plan import PlanError, devices_of, make_plan, needs, parse_gpus, safetensors_gb


def _roles(plan, device):
    return {p["role"] for g in plan["gpus"] if g["device"] == device for p in g["placements"]}


def test_72b_on_four_24gb_cards_is_phased():
    p = make_plan(build_config("4090x4-72b"), parse_gpus("4x24GB"))
    assert p["schedule"] == "phased"
    assert [ph["stages"] for ph in p["phases"]] == [["load", "extract", "write"], ["render"],
                                                    ["load", "candidate_knowledge"], ["load", "retrieve", "rank"]]
    assert p["phases"][0]["devices"] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]  # TP 4: 78.5 GB does not fit less
    assert p["phases"][1]["devices"] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]  # one diffusion worker per GPU
    for g in p["gpus"]:  # vLLM's 0.95 × 24 GiB (≥ 78.5 / 4 + 2 + KV / 4 + 0.5) per card, alone in its phase
        lmm = next(x for x in g["placements"] if x["role"] == "lmm")
        assert lmm["phases"] == [1, 3] and lmm["gb"] == pytest.approx(0.95 * 24 * 2 ** 30 / 1e9, abs=0.01)
        assert g["headroom_gb"] > 0


def test_7b_and_sdxl_on_one_80gb_card_is_fused():
    p = make_plan(build_config("h100"), parse_gpus("1x80GB"))
    assert p["schedule"] == "fused" and not p["phases"]
    g = p["gpus"][0]
    assert {x["role"] for x in g["placements"]} == {"lmm", "diffusion", "scorer"}
    n = needs(build_config("h100"))
    # vLLM takes 0.5 × the card (80 GiB), not what the LMM needs; CLIP-L fp32 1.8
    assert g["peak_gb"] == pytest.approx(0.5 * 80 * 2 ** 30 / 1e9 + n["diffusion"] + 1.8, abs=0.05)


def test_7b_and_sdxl_on_four_24gb_cards_uses_every_gpu():
    p = make_plan(build_config("4090x4"), parse_gpus("4x24GB"))
    assert p["schedule"] == "fused"
    assert devices_of(p, "lmm") == ["cuda:0", "cuda:1"]  # two data-parallel replicas, not TP 2 over PCIe
    assert devices_of(p, "diffusion") == ["cuda:2", "cuda:3"]  # two render workers on one queue
    assert _roles(p, "cuda:3") == {"diffusion", "scorer"}
    assert any("replicas beat tensor parallel" in w for w in p["reasoning"])
    cfg = build_config("4090x4")  # the run profile carries the same placement
    assert cfg.generation.devices == ("cuda:2", "cuda:3") and cfg.rank.device == "cuda:3"


def test_a_run_takes_its_devices_and_schedule_from_the_plan():
    from kbridge.engine.plan import apply_plan

    cfg = build_config("4090x4", overrides={"generation": {"device": "cuda:0"}, "rank": {"device": "cuda:0"}})
    got = apply_plan(cfg, make_plan(cfg, parse_gpus("4x24GB")))
    assert got.generation.devices == ("cuda:2", "cuda:3") and got.generation.device == "cuda:2"
    assert got.rank.device == "cuda:3" and got.lmm.device == "cuda:0" and got.run.schedule == "fused"
    edge = build_config("edge")
    assert apply_plan(edge, make_plan(edge, parse_gpus("1x24GB"))).run.schedule == "phased"
    pinned = build_config("edge", overrides={"run": {"schedule": "fused"}})  # an explicit choice wins
    assert apply_plan(pinned, make_plan(pinned, parse_gpus("1x24GB"))).run.schedule == "fused"


def test_edge_card_is_phased_and_too_small_cards_are_refused():
    p = make_plan(build_config("edge"), parse_gpus("1x24GB"))
    assert p["schedule"] == "phased"  # 10.2 GB LMM + 16.5 GB diffusion worker > 24 GB
    with pytest.raises(PlanError, match="diffusion worker needs"):
        make_plan(build_config("edge"), parse_gpus("1x12GB"))


def test_gpu_lists_and_model_sizes_from_headers(tmp_path):
    assert [g.device for g in parse_gpus("1x80GB,2x24GB")] == ["cuda:0", "cuda:1", "cuda:2"]
    assert [g.total_gb for g in parse_gpus("1x80GB,2x24GB")] == [85.9, 25.77, 25.77]  # GiB, as cards report
    with pytest.raises(ConfigError, match="COUNTxSIZE"):
        parse_gpus("four cards")
    header = json.dumps({"a": {"dtype": "F16", "shape": [1000, 1000], "data_offsets": [0, 2_000_000]},
                         "b": {"dtype": "F16", "shape": [500], "data_offsets": [2_000_000, 2_001_000]},
                         "__metadata__": {"format": "pt"}}).encode()
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)  # no tensor data needed
    assert safetensors_gb(tmp_path) == pytest.approx(2_001_000 / 1e9)
    cfg = build_config("h100", overrides={"models": {"lmm": str(tmp_path)}})
    assert needs(cfg)["lmm_source"] == "safetensors headers"


def test_run_profiles_and_serving_plans_are_one_table():
    assert set(SERVE_PROFILES) <= set(PROFILES)
    assert build_config("4090x4-72b").run.schedule == "phased"


def test_plan_cli_json():
    r = subprocess.run([sys.executable, "-m", "kbridge.cli", "plan", "-p", "4090x4-72b", "--gpus", "4x24GB", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["schedule"] == "phased" and len(p["gpus"]) == 4 and p["phases"]
    assert set(p["gpus"][0]) >= {"device", "total_gb", "free_gb", "placements"}
    assert set(p["gpus"][0]["placements"][0]) >= {"model", "role", "gb"}
    r = subprocess.run([sys.executable, "-m", "kbridge.cli", "plan", "-p", "h100", "--gpus", "1x80GB"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("schedule: fused") and "why:" in r.stdout
