"""The DiCMoR twin: ``TINY`` widths, a tiny BERT, deterministic random weights, built once into the
kbridge cache (zoo.ensure_tiny) and then loaded by the same code as a converted checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch

from kbridge.engine.peers.recover.convert import load_dir, save_dir
from kbridge.engine.peers.recover.flows import ZeroConv
from kbridge.engine.peers.recover.model import TINY, DiCMoR, RecoverConfig

TWIN = "dicmor-v2"
"""v2: the tiny BERT's embedding covers bert-base's vocabulary (MMSA ids)."""


def randomize(model: DiCMoR, seed: int = 0, std: float = 0.05) -> DiCMoR:
    """Fresh DiCMoR couplings start with zero-initialised output convs; give every ZeroConv small
    random weights (seeded) so that flows, priors and tests exercise non-trivial maps."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, ZeroConv):
                for p in (mod.conv.weight, mod.conv.bias, mod.scale):
                    p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def build(cfg: RecoverConfig = TINY, seed: int = 0) -> DiCMoR:
    torch.manual_seed(seed)
    return randomize(DiCMoR(cfg), seed).eval()


def build_twin(out: Path) -> None:
    from kbridge.engine.peers.recover.text import tiny_bert

    tiny_bert(Path(out) / "bert", hidden=TINY.dims[0])
    save_dir(out, build(TINY), Path(out) / "bert", source="tiny twin")


def resolve(spec: str, cache_dir: Path) -> Path:
    """``tiny`` → the cached twin directory (built on first use); otherwise the directory itself."""
    if spec == "tiny":
        from kbridge.engine.zoo import ensure_tiny

        return ensure_tiny(TWIN, Path(cache_dir), builder=build_twin)
    return Path(spec).expanduser()


def load(spec: str, cache_dir: Path):
    """(model, text mode, model dir)."""
    path = resolve(spec, cache_dir)
    model, text = load_dir(path)
    return model, text, path
