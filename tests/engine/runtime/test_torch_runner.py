"""The torch runner's ``torch.compile`` mode (and its cudagraph step marks)."""
from dataclasses import replace

import pytest
import torch

from kbridge.engine.config import build_config
from tests.helpers.cuda_fakes import example_spec


def test_compile_mode_reaches_torch_compile(monkeypatch):
    from kbridge.engine.runtime.torch_runner import torch_runner

    modes = []
    monkeypatch.setattr(torch, "compile", lambda m, mode=None: modes.append(mode) or m)
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    spec = example_spec(2)

    class Ident(torch.nn.Module):
        def forward(self, x, *_):
            return (x,)

    lin = Ident()
    run = torch_runner(replace(spec, inputs=spec.inputs[:1]), lin, compile=True, mode="reduce-overhead")
    x = torch.ones(2, 4, 8, 8)
    y = run({"x": x})["y"]
    assert modes == ["reduce-overhead"] and marks == [1]
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()  # cloned: the graph's buffer is reused
    torch_runner(spec, lin, compile=True)
    assert modes[-1] is None
    with pytest.raises(Exception, match="unknown runtime.compile_mode 'fast'"):
        build_config("tiny", overrides={"runtime": {"compile_mode": "fast"}})
