"""Shared fixtures: one tiny-model cache per test session, one loaded engine for end-to-end tests."""
from __future__ import annotations

import os
import tempfile

import pytest

# Tiny twins are built once per session into this directory (subprocesses inherit it). A caller
# may point KBRIDGE_CACHE somewhere persistent to reuse builds across sessions.
os.environ.setdefault("KBRIDGE_CACHE", tempfile.mkdtemp(prefix="kbridge-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def cfg():
    from kbridge.engine.config import build_config

    return build_config("tiny")


@pytest.fixture(scope="session")
def engine(cfg):
    from kbridge.engine.api import Engine

    eng = Engine(cfg)
    eng.models(need_diffusion=True)
    return eng


@pytest.fixture(scope="session")
def demo_run(engine, tmp_path_factory):
    """The whole demo set, run once; several tests read it."""
    out = tmp_path_factory.mktemp("demo-run")
    report = engine.run(out=out)
    return out, report


@pytest.fixture(scope="session")
def parts(cfg):
    from kbridge.export.parts import load_parts

    return load_parts(cfg)


@pytest.fixture(scope="session")
def exported(cfg, parts):
    """Every part exported once per session into the session's artifact cache (the onnx run in
    test_runtime.py then finds them cached)."""
    from kbridge.export.cache import artifacts_root, ensure_onnx

    return {n: ensure_onnx(ex, artifacts_root(cfg.cache_dir()), cfg.runtime) for n, ex in parts.items()}

