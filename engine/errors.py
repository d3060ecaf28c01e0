"""The error family. Library code raises these; only the CLI turns them into one line and an exit code.

- ``KbridgeError``: the base of every error kbridge raises on purpose.
- ``Unavailable``: a package, backend, device or kernel the configuration asks for is not here
  (``RuntimeUnavailable``, ``LMMUnavailable``, ``KernelUnavailable``… derive from it).
- ``ConfigError`` / ``DataError``: the run cannot start (exit 2).
- ``SampleError`` (engine/types.py): one sample failed; the run records it and goes on.
"""
from __future__ import annotations


class KbridgeError(Exception):
    """Base of every error kbridge raises on purpose."""


class Unavailable(KbridgeError):
    """Something the configuration asks for (a package, backend, device, kernel) is not present."""


class RuntimeUnavailable(Unavailable, RuntimeError):
    """The chosen dense-model runtime backend (engine/runtime) cannot run here (package missing, no
    GPU, provider fell back)."""


class LMMEngineDied(KbridgeError):
    """The LMM engine stopped answering for good (its server is gone, the in-process engine core
    died): the executor stops admitting samples, lets the ones in flight fail with their own line,
    and raises this. Everything written stays; a re-run once the engine is back resumes."""

    def __init__(self, reason: str, admitted: int = 0):
        super().__init__(reason)
        self.reason, self.admitted = reason, admitted
