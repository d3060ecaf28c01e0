"""Checkpoint conversion against the reference key lists, the value round trip, the safe loader."""
from __future__ import annotations

import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kbridge.engine.classify.config import full_config
from kbridge.engine.classify.convert import (CheckpointError, convert, infer_config, load_checkpoint, to_ours,
                                             to_reference)
from kbridge.engine.classify.model import build_meta, load

KEYS = Path("/work/shared/design/peers/keys")
if not KEYS.exists():  # the design docs beside the checkout
    KEYS = Path(__file__).resolve().parents[3] / "shared" / "design" / "peers" / "keys"


def _tsv(kind: str) -> dict:
    p = KEYS / f"{kind}_mmimdb_state_dict.tsv"
    if not p.exists():
        pytest.skip(f"reference key list {p} not available")
    rows = [line.split("\t") for line in p.read_text().splitlines() if line.strip()]
    return {k: (shape, dtype) for k, shape, dtype in rows}


@pytest.mark.parametrize("kind,n", [("dcp", 399), ("rep", 462)])
def test_full_size_layout_is_exactly_the_reference_key_list(kind, n):
    """Our full-size model (on meta), mapped to the published layout, has exactly the TSV's keys and
    shapes; mapping back gives every one of our entries except the rebuilt dynamic queries."""
    m = build_meta(full_config(kind, "mmimdb"))
    ours = m.state_dict()
    ref = to_reference(ours, m.cfg)
    want = _tsv(kind)
    assert len(want) == n and len(ref) == n
    assert set(ref) == set(want)
    assert {k: str(tuple(v.shape)) for k, v in ref.items()} == {k: s for k, (s, _) in want.items()}
    assert {d for _, d in want.values()} == {"float32"}
    # the geometry read back off the shapes is the published one (heads by CLIP's width / 64 rule)
    got = infer_config(ref, kind)
    assert replace(got, rdn_hidden=m.cfg.rdn_hidden, reduction=m.cfg.reduction) == m.cfg
    back = to_ours(ref, m.cfg)
    assert set(ours) - set(back) == {"backbone.vision_dyn_queries", "backbone.text_dyn_queries"}
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(ours[k].shape) for k in back}


def _fake_containers():
    """Pickle-time stand-ins for Lightning's AttributeDict and sacred's ReadOnlyDict (the test must
    not need those packages, and neither may the loader)."""
    mods = {}
    for name in ("pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing",
                 "sacred", "sacred.config", "sacred.config.custom_containers"):
        mods[name] = types.ModuleType(name)

    class AttributeDict(dict):
        pass

    class ReadOnlyDict(dict):
        def __reduce__(self):
            return ReadOnlyDict, (dict(self),)

    AttributeDict.__module__, AttributeDict.__qualname__ = "pytorch_lightning.utilities.parsing", "AttributeDict"
    ReadOnlyDict.__module__, ReadOnlyDict.__qualname__ = "sacred.config.custom_containers", "ReadOnlyDict"
    mods["pytorch_lightning.utilities.parsing"].AttributeDict = AttributeDict
    mods["sacred.config.custom_containers"].ReadOnlyDict = ReadOnlyDict
    return mods, AttributeDict, ReadOnlyDict


def _lightning_ckpt(path: Path, state_dict: dict) -> Path:
    mods, AttributeDict, ReadOnlyDict = _fake_containers()
    sys.modules.update(mods)
    try:
        hp = AttributeDict(config=ReadOnlyDict(prompt_length=6, loss_names={"mmimdb": 1}, seed=0))
        torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "1.1.4", "state_dict": state_dict,
                    "callbacks": {}, "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": hp}, path)
    finally:
        for name in mods:
            sys.modules.pop(name, None)
    return path


class Evil:
    """Not on the allow-list."""


@pytest.fixture(scope="module")
def tiny_ref(tiny_dcp, tmp_path_factory):
    m = load(tiny_dcp)
    ref = to_reference(m.state_dict(), m.cfg)
    return m, ref, _lightning_ckpt(tmp_path_factory.mktemp("ckpt") / "epoch=3-step=120.ckpt", ref)


def test_round_trip_through_a_lightning_checkpoint(tiny_ref, tiny_dcp, tmp_path):
    m, ref, ckpt = tiny_ref
    report = convert(ckpt, tmp_path / "conv", "dcp", tiny_dcp, vision_heads=4, text_heads=4)
    assert report["keys"] == len(ref) and report["task"] == "mmimdb" and report["classes"] == 23
    m2 = load(tmp_path / "conv")
    assert replace(m2.cfg, rdn_hidden=m.cfg.rdn_hidden) == m.cfg    # REP's width has no DCP weight to read
    for k, v in m.state_dict().items():   # every value, dynamic queries included (rebuilt from the seed)
        assert torch.equal(m2.state_dict()[k], v), k
    g = torch.Generator().manual_seed(3)
    px, ids = torch.randn(3, 3, 32, 32, generator=g), torch.randint(1, 1059, (3, 77), generator=g)
    with torch.no_grad():
        assert torch.equal(m(px, ids, torch.tensor([0, 1, 2])), m2(px, ids, torch.tensor([0, 1, 2])))


def test_left_over_or_missing_keys_are_errors(tiny_ref, tiny_dcp, tmp_path):
    _, ref, _ = tiny_ref
    extra = dict(ref, **{"model.prompt_learner.surprise": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="1 unused keys"):
        convert(_lightning_ckpt(tmp_path / "a.ckpt", extra), tmp_path / "a", "dcp", tiny_dcp, vision_heads=4, text_heads=4)
    short = {k: v for k, v in ref.items() if "layernorm_text.1" not in k}
    with pytest.raises(CheckpointError, match="2 missing keys"):
        convert(_lightning_ckpt(tmp_path / "b.ckpt", short), tmp_path / "b", "dcp", tiny_dcp, vision_heads=4, text_heads=4)
    with pytest.raises(CheckpointError, match="not a REP checkpoint"):
        convert(_lightning_ckpt(tmp_path / "c.ckpt", ref), tmp_path / "c", "rep", tiny_dcp)


def test_safe_loader_refuses_unknown_globals_unless_trusted(tiny_ref, tmp_path):
    _, ref, ckpt = tiny_ref
    assert set(load_checkpoint(ckpt)) == set(ref)          # Lightning + sacred containers: allowed
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": ref, "hyper_parameters": Evil()}, bad)
    with pytest.raises(CheckpointError, match=r"Evil outside the allow-list.*--trust-checkpoint"):
        load_checkpoint(bad)
    assert set(load_checkpoint(bad, trust=True)) == set(ref)


def test_cli_convert_dcp(tiny_ref, tiny_dcp, tmp_path):
    from typer.testing import CliRunner

    from kbridge.cli.app import app

    _, _, ckpt = tiny_ref
    import json

    names = [f"genre{i}" for i in range(23)]
    (tmp_path / "class_idx.json").write_text(json.dumps({n: i for i, n in reversed(list(enumerate(names)))}))
    r = CliRunner().invoke(app, ["models", "convert-dcp", "--ckpt", str(ckpt), "--out", str(tmp_path / "o"),
                                 "--tokenizer", str(tiny_dcp), "--vision-heads", "4", "--text-heads", "4",
                                 "--classes", str(tmp_path / "class_idx.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "config.json").read_text())["class_names"] == names
    assert (tmp_path / "o" / "model.safetensors").exists() and (tmp_path / "o" / "tokenizer.json").exists()
    r = CliRunner().invoke(app, ["models", "convert-rep", "--ckpt", str(ckpt), "--out", str(tmp_path / "p"),
                                 "--tokenizer", str(tiny_dcp)])
    assert r.exit_code == 2 and "error:" in r.output and "not a REP checkpoint" in r.output
