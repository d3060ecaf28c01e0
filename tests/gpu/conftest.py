"""The GPU acceptance suite (marker ``gpu``): ``pytest -m gpu`` on a CUDA box, in minutes.

Every test is collected on any machine and skipped on its own, with the reason, when there is no
CUDA GPU or its package (onnxruntime-gpu, tensorrt, torch-tensorrt, vllm) is missing. The tiny
twins are moved to ``cuda:0`` in the dtypes the real GPU profiles use (LMM bfloat16, SDXL and Cheff
float16); tolerances are stated beside each assertion.
"""
from __future__ import annotations

import pytest
import torch

CUDA = torch.cuda.is_available()
NO_GPU = "needs a CUDA GPU (torch.cuda.is_available() is False here)"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if not CUDA:
                item.add_marker(pytest.mark.skip(reason=NO_GPU))


@pytest.fixture(scope="session")
def gpu_cfg():
    """The tiny profile on cuda:0 in the GPU profiles' dtypes."""
    from kbridge.engine.config import build_config

    return build_config("tiny", overrides={
        "lmm": {"device": "cuda:0", "dtype": "bfloat16"},
        "generation": {"device": "cuda:0", "dtype": "float16"},
        "rank": {"device": "cuda:0"},
        "medical": {"device": "cuda:0", "dtype": "float16"},
    })

