"""Dataset errors (one ``error:`` line, exit 2, before any model loads), a configuration error at
start, and ``--metadata`` for ``kbridge index build``. In-process through Typer's runner."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kbridge.cli.app import app
from tests.reliability.relib import plain_dataset, write_config


def _bad_dataset(tmp, kind):
    root = tmp / "ds"
    root.mkdir()
    (root / "metadata.json").write_text(json.dumps([{"file_name": "a.png", "captions": ["x"]}]))
    args = ["--data", str(root), "--format", "coco"]
    if kind == "no such directory":
        args[1] = str(tmp / "nope")
    elif kind == "metadata not JSON":
        (root / "metadata.json").write_text("[{not json")
    elif kind == "metadata not a list":
        (root / "metadata.json").write_text(json.dumps({"file_name": "a.png"}))
    elif kind == "missing config not JSON":
        (tmp / "m.json").write_text("{")
        args += ["--missing", str(tmp / "m.json")]
    elif kind == "missing config without missing_details":
        (tmp / "m.json").write_text(json.dumps({"missing_indices": [0]}))
        args += ["--missing", str(tmp / "m.json")]
    elif kind == "unknown format":
        args[3] = "imagenet"
    elif kind == "--metadata names no file":
        args += ["--metadata", "trainset.json"]
    elif kind == "no format and no category.json":
        args = args[:2]
    return args


KINDS = {"no such directory": "does not exist", "metadata not JSON": "not valid JSON",
         "metadata not a list": "expected a JSON list", "missing config not JSON": "malformed missing config",
         "missing config without missing_details": "malformed missing config",
         "unknown format": "unknown format 'imagenet'", "--metadata names no file": "metadata file trainset.json",
         "no format and no category.json": "pass --format"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_dataset_error(tmp_path, kind):
    r = CliRunner().invoke(app, ["run", *_bad_dataset(tmp_path, kind), "--out", str(tmp_path / "o")])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and KINDS[kind] in lines[0], r.output


def test_a_configuration_error_fails_the_run_at_start(tmp_path):
    (tmp_path / "c.toml").write_text("[run]\nrows_in_flight = 0\n")
    r = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o")])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "rows_in_flight" in lines[0], r.output
    assert not (tmp_path / "o").exists()


def test_index_build_reads_metadata(fake_server, tmp_path):
    root, _ = plain_dataset(tmp_path / "ds", 3)
    (root / "metadata.json").rename(root / "trainset.json")
    cfg = write_config(tmp_path / "c.toml", fake_server.url)
    r = CliRunner().invoke(app, ["index", "build", "--data", str(root), "--format", "coco", "--metadata",
                                 "trainset.json", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0 and "indexed 3 complete samples" in r.output, r.output
