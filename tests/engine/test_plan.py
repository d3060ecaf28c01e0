"""The GPU memory plan, by arithmetic (no GPU needed): placements, memory and schedules, vLLM's
reservation, and the model sizes booked (CLIP as loaded in fp32, a 72B GPTQ-Int8 LMM from its
published shapes)."""
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kbridge.engine.config import ConfigError, build_config
from kbridge.engine.profiles import PROFILES
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


def test_plan_books_vllms_reservation_and_reads_gpu_sizes_as_gib():
    """vLLM 0.32 reserves ``gpu_memory_utilization × total`` on each GPU (``total`` from
    ``torch.cuda.mem_get_info``, bytes) and refuses to start when less is free (v1/worker/utils.py,
    config/cache.py). With the h100 profile's 0.5 on a 56 GiB card that is 30.1 GB, plus SDXL's
    28.5 and CLIP's 1.8: more than the card, so the plan must not fuse."""
    from kbridge.engine.lmm.vllm_local import llm_kwargs
    from kbridge.engine.plan import apply_plan

    total = 56 * 2 ** 30 / 1e9  # what mem_get_info reports for a 56 GiB card, in GB
    assert parse_gpus("1x56GB")[0].total_gb == pytest.approx(total, abs=0.01)
    cfg = build_config("h100")
    n = needs(cfg)
    assert SERVE_PROFILES["h100"].gpu_memory_utilization * total + n["diffusion"] + 1.8 > total
    r = subprocess.run([sys.executable, "-m", "kbridge.cli", "plan", "-p", "h100", "--gpus", "1x56GB"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("schedule: phased"), r.stdout
    p = make_plan(cfg, parse_gpus("1x80GB"))
    lmm = next(x for x in p["gpus"][0]["placements"] if x["role"] == "lmm")
    assert lmm["gb"] == pytest.approx(0.5 * 80 * 2 ** 30 / 1e9, abs=0.01) and p["schedule"] == "fused"
    # edge: the profile's 0.38 of 24 GiB (9.8 GB) is less than the LMM's 10.2 GB: the plan raises it and
    # the run's in-process vLLM gets the raised value
    edge = build_config("edge", overrides={"lmm": {"backend": "vllm"}})
    pe = make_plan(edge, parse_gpus("1x24GB"))
    assert pe["lmm_gpu_memory_utilization"] == 0.40 and any("raised" in w for w in pe["reasoning"])
    placed = apply_plan(edge, pe)
    assert llm_kwargs(Path("m"), placed.lmm, "edge")["gpu_memory_utilization"] == 0.40
    assert llm_kwargs(Path("m"), edge.lmm, "edge")["gpu_memory_utilization"] == 0.38  # no plan: the profile's


def test_clip_scorer_is_booked_as_loaded_fp32():
    """The scorer loads CLIP in float32 (transformers' default dtype): the plan's figure must hold
    the real CLIP ViT-L/14's parameters (transformers' CLIPModel at the published config, counted on
    the meta device) at 4 bytes each."""
    from kbridge.engine import fullsize as F
    from kbridge.engine import zoo
    from kbridge.engine.plan import CLIP_L_GB
    from kbridge.engine.rank.semantic import ClipScorer

    cfg = build_config("tiny")
    scorer = ClipScorer(zoo.resolve("clip", cfg), "cpu")
    assert {p.dtype for p in scorer.model.parameters()} == {torch.float32}
    params = F.param_counts(("clip",))["clip"]
    assert params * 4 / 1e9 <= CLIP_L_GB <= params * 4 / 1e9 + 0.2


def test_72b_gptq_int8_size_from_the_published_shapes():
    """Qwen2-VL-72B-Instruct-GPTQ-Int8: each decoder Linear stores int8 weights, one fp16 scale and
    one 8-bit zero (packed in int32) per 128 inputs of each output (GPTQ's layout, as vLLM's
    gptq_marlin reads it); embeddings, LM head, norms, biases and the 675M-parameter vision tower stay
    in 16 bits. The decoder's shapes come from transformers' Qwen2 model at the published config,
    built on the meta device."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from kbridge.engine.plan import LMM_GB

    cfg = Qwen2Config(vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                      num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False)
    with torch.device("meta"):
        m = Qwen2ForCausalLM(cfg)
    lin = [mod for name, mod in m.model.layers.named_modules() if isinstance(mod, torch.nn.Linear)]
    q = sum(mod.weight.numel() for mod in lin)
    per_group = sum(mod.out_features * (mod.in_features // 128) for mod in lin)
    rest = sum(p.numel() for p in m.parameters()) - q
    total = (q * 1 + per_group * (2 + 1) + rest * 2 + 675e6 * 2) / 1e9
    assert total == pytest.approx(78.2, abs=0.3)  # int8 weights + per-group scale and zero + 16-bit rest + vision tower
    assert total <= LMM_GB["Qwen2-VL-72B-Instruct-GPTQ-Int8"] <= total + 0.5
