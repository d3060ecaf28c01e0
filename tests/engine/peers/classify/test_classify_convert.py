"""Checkpoint conversion against the reference key lists, the value round trip, the safe loader,
and the one-line refusals (tokenizer, shapes, non-checkpoints), on Lightning checkpoints saved the
way the publishers save them (tests/helpers/publisher_pickles.py)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kbridge.engine.peers.classify.config import full_config
from kbridge.engine.peers.classify.convert import (CheckpointError, convert, infer_config, load_checkpoint, to_ours,
                                             to_reference)
from kbridge.engine.peers.classify.model import build_meta, load

from tests.helpers.publisher_pickles import lightning_ckpt

KEYS = Path(__file__).parent / "data"   # the reference key lists (design notes, peers/keys)


def _tsv(kind: str) -> dict:
    p = KEYS / f"{kind}_mmimdb_state_dict.tsv"
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


def _lightning_ckpt(path: Path, state_dict: dict) -> Path:
    return lightning_ckpt(path, state_dict)


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
    with pytest.raises(CheckpointError, match=r"refused: it pickles \S*Evil, which is not one of the known.*--trust"):
        load_checkpoint(bad)
    assert set(load_checkpoint(bad, trust=True)) == set(ref)


def test_cli_convert_dcp(tiny_ref, tiny_dcp, tmp_path):
    from typer.testing import CliRunner

    from kbridge.cli.app import app

    _, _, ckpt = tiny_ref
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


def test_lightning_callbacks_keyed_by_class_load_without_lightning(tiny_ref):
    """PL < 1.5 keys ``callbacks`` by the ModelCheckpoint class: loads without pytorch_lightning
    installed and without --trust-checkpoint; the class is an inert stand-in."""
    import sys

    from kbridge.engine.published import Inert, load

    _, ref, ckpt = tiny_ref
    assert "pytorch_lightning" not in sys.modules
    obj = load(ckpt)
    (cb, state), = obj["callbacks"].items()
    assert issubclass(cb, Inert) and cb.published_as == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert state["monitor"] == "val/the_metric" and obj["hyper_parameters"]["config"]["seed"] == 0
    assert type(obj["hyper_parameters"]["config"]) is dict
    assert set(load_checkpoint(ckpt)) == set(ref)


def _one_error_line(r) -> str:
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.output
    return lines[0]


def _cli(*args):
    from typer.testing import CliRunner

    from kbridge.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_convert_refuses_a_tokenizer_that_is_not_the_models(tiny_ref, tiny_dcp, tmp_path):
    """No tokenizer files, a path that does not exist, a vocabulary of the wrong size: one line each,
    and no output directory (a 2-token tokenizer used to be written and reported as success)."""
    _, _, ckpt = tiny_ref
    conv = ["models", "convert-dcp", "--ckpt", ckpt, "--vision-heads", 4, "--text-heads", 4]
    (tmp_path / "empty").mkdir()
    line = _one_error_line(_cli(*conv, "--out", tmp_path / "o1", "--tokenizer", tmp_path / "empty"))
    assert "no CLIP tokenizer files" in line and not (tmp_path / "o1").exists()
    line = _one_error_line(_cli(*conv, "--out", tmp_path / "o2", "--tokenizer", tmp_path / "nowhere"))
    assert "tokenizer directory not found" in line and not (tmp_path / "o2").exists()
    small = tmp_path / "small"
    small.mkdir()
    (small / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate("abcdef")}))
    (small / "merges.txt").write_text("#version: 0.2\n")
    line = _one_error_line(_cli(*conv, "--out", tmp_path / "o3", "--tokenizer", small))
    assert "the tokenizer has 8 tokens but the checkpoint's text embedding has 1060" in line and not (tmp_path / "o3").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temporary left


def test_wrong_shaped_tensor_and_non_checkpoints_are_one_line(tiny_ref, tiny_dcp, tmp_path):
    _, ref, _ = tiny_ref
    bad = dict(ref)
    k = "model.prompt_learner.visual_prompt_complete"
    bad[k] = torch.zeros(bad[k].shape[0], bad[k].shape[1] + 1)
    args = ["--out", tmp_path / "o", "--tokenizer", tiny_dcp, "--vision-heads", 4, "--text-heads", 4]
    line = _one_error_line(_cli("models", "convert-dcp", "--ckpt", _lightning_ckpt(tmp_path / "s.ckpt", bad), *args))
    assert "1 wrong-shaped tensors" in line
    assert "learner.visual_prompt_complete" in line and not (tmp_path / "o").exists()
    (tmp_path / "notes.txt").write_text("hello\n")
    line = _one_error_line(_cli("models", "convert-dcp", "--ckpt", tmp_path / "notes.txt", *args))
    assert "not a torch checkpoint" in line
    line = _one_error_line(_cli("models", "convert-dcp", "--ckpt", tmp_path / "absent.ckpt", *args))
    assert "absent.ckpt: no such file" in line


def test_output_dir_is_written_aside_and_renamed(tmp_path):
    from kbridge.engine.published import PublishedCheckpointError, output_dir

    with pytest.raises(RuntimeError):
        with output_dir(tmp_path / "m") as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with output_dir(tmp_path / "m") as tmp:
        (tmp / "config.json").write_text("{}")
    with output_dir(tmp_path / "m") as tmp:   # a previous model directory is replaced
        (tmp / "config.json").write_text('{"v": 2}')
    assert [p.name for p in tmp_path.iterdir()] == ["m"] and (tmp_path / "m" / "config.json").read_text() == '{"v": 2}'
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(PublishedCheckpointError, match="exists and is not a model directory"):
        with output_dir(tmp_path / "docs"):
            pass
