"""Caches: the LMM response cache misses on anything that changes an answer and never trusts a
damaged row or file; an exported ONNX artifact is rebuilt when its weights change or when it is
damaged (size / sha256 against files.json)."""
from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from pathlib import Path

import pytest

import kbridge.engine.lmm as L
from kbridge.engine.config import RuntimeConfig, build_config
from kbridge.engine.lmm import Request, request_key
from kbridge.engine.domains.general import prompts as P
from kbridge.engine.domains.general import schemas as S
from kbridge.engine.lmm.hf import model_fingerprint
from kbridge.engine.store import ResponseCache
from tests.reliability.relib import tiny_exportable

K = build_config("tiny").knowledge
BASE = Request(P.chain_compress(K, "a red cup"), S.prompt(K), 7, 64, 0.7, "s0", "generate", 1)
ANSWER = {"text": '{"prompt": "a red cup"}', "parsed": {"prompt": "a red cup"}, "prompt_tokens": 3,
          "generated_tokens": 5}


def _model_dir(root: Path, hidden: int, weight_bytes: int = 8) -> str:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"hidden_size": hidden}))
    (root / "model.safetensors").write_bytes(b"\0" * weight_bytes)
    return model_fingerprint(root)


CHANGES = {
    "prompt version": lambda m, r, mp: (mp.setattr(L, "PROMPT_VERSION", L.PROMPT_VERSION + "-changed"), (m, r))[1],
    "schema": lambda m, r, mp: (m, dataclasses.replace(r, schema=S.prompts(K, 2))),
    "sampling: temperature": lambda m, r, mp: (m, dataclasses.replace(r, temperature=0.9)),
    "sampling: token cap": lambda m, r, mp: (m, dataclasses.replace(r, max_new_tokens=65)),
    "seed": lambda m, r, mp: (m, dataclasses.replace(r, seed=8)),
}


@pytest.mark.parametrize("change", ["model directory: config", "model directory: weights", *CHANGES])
def test_a_changed_input_misses_the_response_cache(tmp_path, monkeypatch, change):
    model = _model_dir(tmp_path / "m", 32)
    cache = ResponseCache(tmp_path / "cache.sqlite")
    cache.put(request_key(model, BASE, False), ANSWER)
    assert cache.get(request_key(model, BASE, False)) == ANSWER  # unchanged: a hit
    if change.startswith("model directory"):
        other = _model_dir(tmp_path / "m2" / "m", 64) if change.endswith("config") else \
            _model_dir(tmp_path / "m2" / "m", 32, weight_bytes=16)
        assert other != model
        key = request_key(other, BASE, False)
    else:
        m, r = CHANGES[change](model, BASE, monkeypatch)
        key = request_key(m, r, False)
    assert cache.get(key) is None
    cache.close()


def test_a_corrupted_cache_row_is_reported_once_dropped_and_asked_again(tmp_path, caplog):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    keys = [request_key("m", dataclasses.replace(BASE, seed=s), False) for s in range(3)]
    for k in keys:
        cache.put(k, ANSWER)
    cache.db.execute("UPDATE answers SET value = ? WHERE key = ?", ('{"text": "tampered"}', keys[0]))
    cache.db.execute("UPDATE answers SET value = ? WHERE key = ?", ("{torn", keys[1]))
    with caplog.at_level(logging.WARNING, logger="kbridge.engine.store"):
        assert cache.get(keys[0]) is None and cache.get(keys[1]) is None
    assert len([r for r in caplog.records if "corrupted entry" in r.getMessage()]) == 1
    assert cache.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 1  # dropped, not kept
    assert cache.get(keys[2]) == ANSWER
    cache.put(keys[0], ANSWER)
    assert cache.get(keys[0]) == ANSWER
    cache.close()


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_cache_file_is_reported_moved_aside_and_rebuilt(tmp_path, caplog, damage):
    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path)
    for s in range(300):
        cache.put(request_key("m", dataclasses.replace(BASE, seed=s), False), {**ANSWER, "text": "x" * 200})
    cache.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cache.close()
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3] if damage == "truncated" else b"garbage" * 1000)
    with caplog.at_level(logging.WARNING, logger="kbridge.engine.store"):
        fresh = ResponseCache(path)
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1
    assert (tmp_path / "cache.sqlite.corrupt").exists()
    key = request_key("m", BASE, False)
    assert fresh.get(key) is None
    fresh.put(key, ANSWER)
    assert fresh.get(key) == ANSWER
    fresh.close()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from kbridge.export.cache import ensure_onnx

    tmp = tmp_path_factory.mktemp("art")
    ex = tiny_exportable(tmp / "w.safetensors")
    first = ensure_onnx(ex, tmp / "art", RuntimeConfig())
    return tmp, first


def test_an_unchanged_artifact_is_reused(artifact):
    from kbridge.export.cache import ensure_onnx

    tmp, first = artifact
    assert first.built
    again = ensure_onnx(tiny_exportable(tmp / "w.safetensors"), tmp / "art", RuntimeConfig())
    assert not again.built and again.path == first.path


@pytest.mark.parametrize("damage", ["graph truncated", "weights overwritten", "files.json missing"])
def test_a_damaged_artifact_is_detected_and_rebuilt(artifact, caplog, damage):
    import onnxruntime as ort

    from kbridge.export.cache import ensure_onnx, intact

    tmp, first = artifact
    d = first.path.parent
    if damage == "graph truncated":
        first.path.write_bytes(first.path.read_bytes()[:100])
    elif damage == "weights overwritten":
        f = max((p for p in d.iterdir() if p.name.startswith("model.onnx")), key=lambda p: p.stat().st_size)
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # same size, other bytes: only the hash can tell
        f.write_bytes(bytes(raw))
    else:
        (d / "files.json").unlink()
    assert not intact(d, first.path)
    with caplog.at_level(logging.WARNING, logger="kbridge.export.cache"):
        again = ensure_onnx(tiny_exportable(tmp / "w.safetensors"), tmp / "art", RuntimeConfig())
    assert again.built and again.path == first.path and intact(d, first.path)
    assert any("damaged or incomplete; rebuilding" in r.getMessage() for r in caplog.records)
    ort.InferenceSession(str(again.path), providers=["CPUExecutionProvider"])


def test_a_changed_weight_file_rebuilds_the_artifact(artifact, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from kbridge.export.cache import ensure_onnx

    tmp, first = artifact
    w = tmp_path / "w.safetensors"
    shutil.copy(tmp / "w.safetensors", w)
    t = load_file(str(w))
    t["bias"] += 1.0
    save_file(t, str(w))
    other = ensure_onnx(tiny_exportable(w), tmp / "art", RuntimeConfig())
    assert other.built and other.path.parent != first.path.parent
    assert other.key["weights_sha256"] != first.key["weights_sha256"]
