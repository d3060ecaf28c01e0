"""An Engine over the session's loaded tiny dense models (the ``engine`` fixture's scorer and
generator replicas) and a given LMM backend, so a test pays for no model load of its own; a phase
that released a slot gets the same objects back."""
from __future__ import annotations


def engine_with(cfg, engine, lmm=None):
    """``lmm``: a backend (a FakeLMM, …), or None for the session's tiny LMM twin."""
    from kbridge.engine.api import Engine

    eng = Engine(cfg)
    loaded = engine.models()
    eng.loaders.update(lmm=(lambda _: lmm) if lmm is not None else (lambda _: loaded.lmm),
                       scorer=lambda _: loaded.scorer, generators=lambda _: loaded.generators)
    return eng
