"""kbridge engine: extract → generate → rank for missing-modality completion.

The small public API: ``Engine`` (models loaded once, many runs) and ``complete`` (one call on
a dataset directory or the bundled demo set). Imported lazily so ``import kbridge.engine.x``
stays cheap.
"""

__all__ = ["Engine", "complete"]


def __getattr__(name):
    if name in __all__:
        from kbridge.engine import api

        return getattr(api, name)
    raise AttributeError(name)
