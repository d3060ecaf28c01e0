"""Helpers of the reliability matrix: the CLI as a subprocess, run-directory checks, the synthetic
datasets (one with every bad input, one plain one for load and faults)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

KB = [sys.executable, "-m", "kbridge.cli"]


def write_config(path: Path, url: str, candidates: int = 2, steps: int = 1, **run) -> Path:
    """A run config: the fake LMM behind the loopback server, 2 candidates, 1 diffusion step, and
    the joint writing call with self-written caption triples (one answer per write: the fault
    chain's call arithmetic counts on it; parallel writing and extracted caption triples, the
    defaults, are covered by tests/engine/test_rows.py and tests/engine/test_api.py)."""
    run = {"rows_in_flight": 1, **run}
    lines = ["[lmm]", 'backend = "http"', f'url = "{url}"', "retries = 1", "backoff_s = 0.01",
             "[knowledge]", 'write = "joint"', 'caption_triples_from = "self"',
             "[generation]", f"candidates = {candidates}", f"steps = {steps}", "[run]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in run.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def kb(*args, fault: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("KBRIDGE_FAULT", None)
    if fault:
        env["KBRIDGE_FAULT"] = fault
    return subprocess.run([*KB, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def check_run_dir(out: Path) -> dict[str, dict]:
    """Every results line whole and unique, every referenced image a complete PNG; the rows."""
    data = (Path(out) / "results.jsonl").read_bytes() if (Path(out) / "results.jsonl").exists() else b""
    assert not data or data.endswith(b"\n"), "torn last line"
    rows: dict[str, dict] = {}
    for ln in data.splitlines():
        r = json.loads(ln)
        assert r["sample_id"] not in rows, f"{r['sample_id']} written twice"
        rows[r["sample_id"]] = r
        for c in r["candidates"]:
            if "image" in c:
                with Image.open(Path(out) / c["image"]) as im:
                    im.load()  # a half-written PNG fails here
                assert not Path(c["image"]).name.startswith(".")
    return rows


def plain_dataset(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """``n`` small samples (64×64 images, one caption each), half missing their image, half their
    text; returns (dataset dir, missing config)."""
    from kbridge.engine.data import make_missing

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    words = ["red", "cup", "dog", "grass", "table", "sky", "wooden", "small"]
    items = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        items.append({"file_name": f"{i}.png", "labels": [int(rng.integers(0, 80))],
                      "captions": [" ".join(rng.choice(words, 5)) + "."]})
    (root / "metadata.json").write_text(json.dumps(items))
    m = root.parent / f"{root.name}-missing.json"
    m.write_text(json.dumps(make_missing(n, "mixed", 1.0, seed)))
    return root, m


def tiny_exportable(weights: Path):
    """A one-layer model whose weights live in ``weights`` (a safetensors file written on first
    use): the smallest thing the artifact cache can export."""
    import torch
    from safetensors.torch import load_file, save_file

    from kbridge.export.parts import Exportable
    from kbridge.export.specs import Axis, ExportSpec, TensorSpec

    if not Path(weights).exists():
        g = torch.Generator().manual_seed(0)
        save_file({"weight": torch.randn(2, 4, generator=g), "bias": torch.zeros(2)}, str(weights))
    lin = torch.nn.Linear(4, 2)
    lin.load_state_dict(load_file(str(weights)))

    class IO(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return (self.lin(x),)

    spec = ExportSpec("toy.linear", (TensorSpec("x", ("batch", 4)),), (TensorSpec("y", ("batch", 2)),),
                      (Axis("batch", 1, 2, 8, 3),))
    return Exportable(spec, IO(), (Path(weights),))


BUILD_BOTH = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from tests.reliability.relib import tiny_exportable
from kbridge.engine.config import RuntimeConfig
from kbridge.engine.zoo import ensure_tiny
from kbridge.export.cache import ensure_onnx
print(ensure_tiny("clip", Path(sys.argv[2])))
a = ensure_onnx(tiny_exportable(Path(sys.argv[1])), Path(sys.argv[2]) / "artifacts", RuntimeConfig())
print(a.built, a.path)
"""

