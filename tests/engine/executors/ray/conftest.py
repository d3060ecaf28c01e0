"""One local Ray instance for the Ray executor tests (2 logical CPUs, no dashboard), and a time
limit on every test: a Ray pipeline that cannot be scheduled waits forever instead of failing."""
from __future__ import annotations

import signal

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
pytest.importorskip("ray.data")

LIMIT_S = 480  # generous: on a loaded 2-core machine one Ray test took 163 s


@pytest.fixture(autouse=True)
def time_limit():
    def expire(signum, frame):
        raise TimeoutError(f"a Ray test ran past {LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="session")
def ray_cluster():
    """``ray.init(num_cpus=2)``; the test helpers (fake LMMs) travel to the actors by value."""
    from tests.helpers import fake_lmm

    ray.cloudpickle.register_pickle_by_value(fake_lmm)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
