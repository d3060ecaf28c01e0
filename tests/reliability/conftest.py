"""Fixtures of the reliability matrix: one loopback OpenAI-compatible server with the fake LMM
behind it (subprocess runs use it through ``--lmm``), shared for the whole session."""
from __future__ import annotations

import pytest

from tests.helpers.fake_lmm import FakeLMM
from tests.helpers.openai_server import Faults, LMMServer


@pytest.fixture(scope="session")
def fake_server():
    with LMMServer(FakeLMM(continuous=True)) as s:
        yield s


@pytest.fixture
def server(fake_server):
    """The shared server with no faults injected and its counters at zero."""
    fake_server.faults = Faults()
    fake_server.bodies.clear()
    fake_server.answered = 0
    yield fake_server
    fake_server.faults = Faults()


@pytest.fixture(scope="session")
def dense(cfg):
    """The tiny dense models only (scorer, generator replicas): these tests never need the tiny LMM."""
    from kbridge.engine.api import Engine

    return Engine(cfg).ensure({"scorer", "generators"})
