"""The package's tests run torch on one intra-op thread (tests/helpers/torch_threads.py)."""
import pytest

from tests.helpers.torch_threads import one_torch_thread


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield
