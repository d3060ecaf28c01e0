"""The chest-X-ray domain end to end on the bundled demo pairs, and its parts."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.jsonl import read_jsonl
from kbridge.engine import data as D
from kbridge.engine.api import Engine
from kbridge.engine.config import ConfigError, build_config
from kbridge.engine.domains.chest_xray import prompts as MP
from kbridge.engine.domains.chest_xray import schemas as MS
from kbridge.engine.domains import CHEST_XRAY, domain_of
from kbridge.engine.domains.chest_xray.record import (CHEXPERT, FewShotError, demo_paths, knowledge_from_record,
                                                      llm_text, load_few_shot, record_triples, scoring_text)

N = 2
OLD_TINY_MEDICAL_HASH = "5f0584d307d1bba2"
SMALL = {"run": {"domain": "chest_xray"}, "generation": {"candidates": N},
         "knowledge": {"max_objects": 2, "max_attributes": 1, "triples": 3, "caption_triples": 2, "name_chars": 12},
         "medical": {"few_shot_count": 1, "report_words": (3, 8)}}


@pytest.fixture(scope="module")
def med_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("medical-run")
    eng = Engine(build_config("tiny", overrides=SMALL))
    return out, eng.run(out=out), eng


def test_demo_xrays_complete_with_triples(med_run):
    out, report, _ = med_run
    root, fmt, missing = demo_paths()
    ds = D.open_dataset(root, fmt, missing)
    rows = {r["index"]: r for r in read_jsonl(out / "results.jsonl")}
    assert not report.errors and report.completed == len(rows) == 6
    assert {i for i, r in rows.items() if r["missing"] == "image"} == {i for i, m in ds.missing.items() if m == "image"}
    assert {i for i, r in rows.items() if r["missing"] == "text"} == {i for i, m in ds.missing.items() if m == "text"}
    for r in rows.values():
        kn = r["knowledge"]
        assert kn["triples"] and set(kn["medical"]) >= {"anatomy", "findings", "diagnoses", "recommendation", "triples"}
        assert set(kn["medical"]["diagnoses"]) <= set(CHEXPERT)
        assert {"head": "chest x-ray", "relation": "suggests", "tail": kn["medical"]["diagnoses"][0]} in kn["triples"]
        assert 1 <= len(r["candidates"]) <= N
        for c in r["candidates"]:
            assert c["triples"], "graph ranking needs triples on every candidate"
            assert all(0.0 <= v <= 1.0 for v in c["scores"].values())
            if r["missing"] == "image":
                a = np.asarray(Image.open(out / c["image"]).convert("RGB"))
                assert a.shape == (64, 64, 3) and np.array_equal(a[..., 0], a[..., 2])
                assert c["prompt"] and "XXXX" not in c["prompt"]
            else:
                assert c["text"]
        n = len(r["candidates"])
        if r["missing"] == "image":  # analysis, reports, one analysis per generated X-ray; DDIM without CFG
            assert r["counts"]["lmm_calls"] == 2 + n and r["counts"]["unet_evals"] == 4 * n
        else:
            assert r["counts"]["lmm_calls"] == 2 and r["counts"]["unet_evals"] == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["run"]["domain"] == "chest_xray" and man["data"]["format"] == "iuxray"


def test_medical_run_uses_cheff_and_the_medical_scorer(med_run):
    from kbridge.engine.generate.cheff import CheffGenerator
    from kbridge.engine.domains.chest_xray.scorer import ReportScorer

    _, _, eng = med_run
    m = eng.models()
    assert isinstance(m.generators[0], CheffGenerator) and isinstance(m.scorer, ReportScorer)
    # anonymisation tokens never reach the scorer's text tower
    a, b = m.scorer.embed_texts(["Heart size XXXX normal. XXXX are intact."]), m.scorer.embed_texts(
        ["Heart size normal. are intact."])
    assert torch.allclose(a, b, atol=1e-6)


def test_tiny_medical_scorer_is_its_own_model(cfg):
    from transformers import CLIPModel

    from kbridge.engine import zoo

    a, b = (CLIPModel.from_pretrained(zoo.resolve(n, cfg)).text_projection.weight for n in ("clip", "med_clip"))
    assert a.shape == b.shape and not torch.equal(a, b)


def test_xxxx_handling():
    assert llm_text("Dr. XXXX notified at XXXX-XXXX.") == "Dr. [redacted] notified at [redacted]."
    assert scoring_text("Comparison XXXX XXXX.\nXXXX are intact. No effusion") == "Comparison.\nare intact. No effusion"
    assert scoring_text("XXXX.") == ""
    assert "xxxx" in scoring_text("lowercase xxxx is a word")  # only the upper-case anonymisation token


def test_iuxray_demo_reports_and_grayscale_images():
    ds = D.open_dataset(*demo_paths())
    s = D.load_sample(ds, 1, None)
    impression, findings = ds.items[1]["captions"]
    assert '"' in findings and '"' not in s.text and s.text.startswith(impression + "\n")
    assert any("XXXX" in " ".join(r["captions"]) for r in ds.items)
    assert Image.open(ds.root / ds.items[1]["file_name"]).mode == "L" and s.image.mode == "RGB"


def test_few_shot_examples_form_a_shared_prefix(tmp_path):
    cfg = build_config("tiny", overrides=SMALL).knowledge
    ex = load_few_shot("", 2)
    assert len(ex) == 2
    a = MP.analysis(cfg, ex, "Small left effusion.", None)
    b = MP.analysis(cfg, ex, None, Image.new("RGB", (8, 8)))
    assert a[:-1] == b[:-1] and len(a) == 1 + 2 * 2 + 1
    assert "[redacted]" in json.dumps(MP.analysis(cfg, ex, "Dr. XXXX called.", None)[-1]["content"])
    own = tmp_path / "shots.json"
    own.write_text(json.dumps([{"report": "Clear lungs.", "record": {"diagnoses": ["No Finding"]}}]))
    assert load_few_shot(str(own), 5)[0]["report"] == "Clear lungs." and load_few_shot(str(own), 0) == []
    own.write_text('{"report": 1}')
    with pytest.raises(FewShotError):
        load_few_shot(str(own), 1)


def test_record_schema_and_implied_triples():
    k = build_config("tiny").knowledge
    s = MS.record(k)
    assert s["properties"]["diagnoses"]["items"]["enum"] == list(CHEXPERT)
    rec = {"anatomy": [{"structure": "heart", "status": "normal"}],
           "findings": [{"abnormality": "effusion", "characteristics": ["blunting"], "side": "left",
                         "location": "costophrenic angle", "extent": "not applicable"}],
           "diagnoses": ["Pleural Effusion"], "recommendation": "follow up",
           "triples": [{"head": "effusion", "relation": "located in", "tail": "costophrenic angle"}]}
    got = {(t.head, t.relation, t.tail) for t in record_triples(rec)}
    assert got == {("heart", "appears", "normal"), ("effusion", "located in", "costophrenic angle"),
                   ("effusion", "on side", "left"), ("effusion", "is", "blunting"),
                   ("chest x-ray", "suggests", "Pleural Effusion")}
    kn = knowledge_from_record(rec)
    assert len(kn.triples) == 5  # the LMM's triple duplicates an implied one
    assert kn.as_dict()["medical"] == rec and kn.style == "chest X-ray; Pleural Effusion"


def _checked(overrides):
    cfg = build_config("tiny", overrides=overrides)
    domain_of(cfg).check(cfg)
    return cfg


def test_domain_config():
    with pytest.raises(ConfigError, match="domain"):
        build_config("tiny", overrides={"run": {"domain": "veterinary"}})
    with pytest.raises(ConfigError, match="fidelity"):
        _checked({"run": {"domain": "chest_xray", "fidelity": "reference"}})
    with pytest.raises(ConfigError, match="fidelity"):  # Engine asks the domain before any work
        Engine(build_config("tiny", overrides={"run": {"domain": "chest_xray", "fidelity": "reference"}}))
    with pytest.raises(ConfigError, match="--backend torch"):
        _checked({"run": {"domain": "chest_xray"}, "runtime": {"backend": "onnx"}})
    general = build_config("tiny")
    assert build_config("tiny", overrides={"medical": {"steps": 9}}).result_hash() == general.result_hash()
    med = _checked({"run": {"domain": "chest_xray"}})
    assert med.result_hash() != general.result_hash()
    assert build_config("tiny", overrides={"run": {"domain": "chest_xray"}, "medical": {"steps": 9}}).result_hash() \
        != med.result_hash()
    assert build_config("h100").medical.device == "cuda:0"
    with pytest.raises(ConfigError, match="few_shot: no such file"):
        _checked({"run": {"domain": "chest_xray"}, "medical": {"few_shot": "/nowhere.json"}})


def test_medical_is_an_alias_of_chest_xray_and_old_run_hashes_hold(tmp_path):
    alias = build_config("tiny", overrides={"run": {"domain": "medical"}})
    toml = tmp_path / "med.toml"
    toml.write_text('[run]\ndomain = "medical"\n')
    from_file = build_config("tiny", config_file=str(toml))
    assert alias.run.domain == from_file.run.domain == "chest_xray"
    assert domain_of(alias) is domain_of(from_file) is CHEST_XRAY
    # the hash the tiny chest-X-ray config had while the domain was named "medical" (run
    # directories made then resume): computed with the config module of commit 8c3f02d
    assert alias.result_hash() == build_config("tiny", overrides={"run": {"domain": "chest_xray"}}).result_hash() \
        == OLD_TINY_MEDICAL_HASH


def test_a_malformed_few_shot_file_is_refused_before_any_work(tmp_path):
    bad = tmp_path / "shots.json"
    bad.write_text('{"report": 1}')
    with pytest.raises(ConfigError, match="medical.few_shot"):
        Engine(build_config("tiny", overrides={"run": {"domain": "chest_xray"}, "medical": {"few_shot": str(bad)}}))


def test_cli_domain_flag_is_validated():
    from typer.testing import CliRunner

    from kbridge.cli.app import app

    r = CliRunner().invoke(app, ["run", "--domain", "veterinary", "--out", "unused"])
    assert r.exit_code == 2 and "unknown run.domain 'veterinary' (known: general, chest_xray; also medical)" in r.output
