import re

import pytest

from kbridge.engine.config import ConfigError, build_config
from kbridge.engine.profiles import PROFILES


def test_profiles_build_and_gpu_profiles_keep_reference_sdxl_settings():
    for name in PROFILES:
        cfg = build_config(name)
        assert cfg.profile == name
    for name in ("h100", "4090x4", "edge"):
        g = build_config(name).generation
        assert (g.height, g.width, g.steps, g.high_noise_frac, g.guidance) == (1024, 1024, 50, 0.8, 5.0)
    tiny = build_config("tiny").generation
    assert tiny.height == 64 and tiny.steps == 4


def test_toml_file_and_overrides_apply_in_order(tmp_path):
    f = tmp_path / "kb.toml"
    f.write_text('[generation]\ncandidates = 3\nsteps = 6\n[knowledge]\nprompt_words = [3, 9]\n')
    cfg = build_config("tiny", f, {"generation": {"candidates": 2}})
    assert cfg.generation.candidates == 2 and cfg.generation.steps == 6
    assert cfg.knowledge.prompt_words == (3, 9)


@pytest.mark.parametrize("text, msg", [("[nope]\nx = 1\n", "unknown config section"),
                                       ("[generation]\nwat = 1\n", "unknown key"),
                                       ("[generation\n", "cannot read config file")])
def test_bad_config_files_fail_clearly(tmp_path, text, msg):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        build_config("tiny", f)


def test_invalid_values_are_rejected():
    with pytest.raises(ConfigError, match="fidelity"):
        build_config("tiny", overrides={"run": {"fidelity": "sloppy"}})
    with pytest.raises(ConfigError, match="profile"):
        build_config("nope")
    with pytest.raises(ConfigError, match="weights"):
        build_config("tiny", overrides={"rank": {"semantic_weight": 0.0, "graph_weight": 0.0}})


def test_result_hash_ignores_throughput_knobs_but_not_results():
    base = build_config("tiny")
    assert base.result_hash() == build_config("tiny", overrides={"run": {"batch_size": 9}}).result_hash()
    assert base.result_hash() == build_config("tiny", overrides={"lmm": {"max_batch": 2}}).result_hash()
    assert base.result_hash() == build_config("tiny", overrides={"generation": {"split": 2}}).result_hash()
    with pytest.raises(ConfigError, match="generation.split"):
        build_config("tiny", overrides={"generation": {"split": 0}})
    assert base.result_hash() != build_config("tiny", overrides={"run": {"seed": 1}}).result_hash()
    assert base.result_hash() != build_config("tiny", overrides={"generation": {"candidates": 2}}).result_hash()


def test_every_choice_field_refuses_other_values_naming_its_list():
    import dataclasses
    from typing import Literal, get_origin, get_type_hints

    from kbridge.engine.config import PipelineConfig, choices

    base, seen = build_config("tiny"), []
    for sec in dataclasses.fields(PipelineConfig):
        section = getattr(base, sec.name)
        if not dataclasses.is_dataclass(section):
            continue
        hints = get_type_hints(type(section))
        for f in dataclasses.fields(section):
            if get_origin(hints[f.name]) is not Literal:
                continue
            known = choices(hints[f.name])
            assert getattr(section, f.name) == known[0]  # the default comes first (the CLI's help says so)
            msg = f"unknown {sec.name}.{f.name} 'nope' (known: {', '.join(known)}"
            with pytest.raises(ConfigError, match=re.escape(msg)):
                build_config("tiny", overrides={sec.name: {f.name: "nope"}})
            seen.append(f"{sec.name}.{f.name}")
    assert len(seen) == 15 and {"run.domain", "run.schedule", "runtime.backend", "lmm.backend"} <= set(seen)


def test_one_profile_table_holds_the_serving_plans_and_the_gpus():
    from kbridge.engine.lmm.serving import CPU_PROFILES, SERVE_PROFILES
    from kbridge.engine.plan import default_gpus, parse_gpus

    assert set(SERVE_PROFILES) | set(CPU_PROFILES) == set(PROFILES) and CPU_PROFILES == ("tiny", "small")
    p = SERVE_PROFILES["4090x4-72b"]
    assert (p.tensor_parallel, p.devices, p.quantization, p.execution) == (4, "0,1,2,3", "gptq", "phased")
    assert default_gpus(build_config("4090x4")) == parse_gpus("4x24GB") and len(parse_gpus("4x24GB")) == 4
    with pytest.raises(ConfigError, match="runs on the CPU"):
        default_gpus(build_config("tiny"))
