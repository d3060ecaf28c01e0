"""Named fault points for the reliability tests: deterministic, not timed.

``KBRIDGE_FAULT="point[@N][:action]"`` (several separated by commas) makes the N-th time (default
1st) this process reaches ``check(point)`` do ``action``:

- ``kill``: SIGKILL this process (as an OOM killer or a power cut would);
- ``enospc``: raise ``OSError(ENOSPC)`` (disk full);
- ``raise``: raise ``RuntimeError`` (an unexpected bug);
- ``hang``: sleep for a minute (a stuck process; a test kills it).

Points: ``extract`` (an extraction answer is back, before it is kept), ``render`` (images rendered,
before they are kept), ``result`` (a sample's images written, before its result line), ``append``
(half a results line written), ``manifest`` (manifest written aside, before the rename),
``cache`` (an LMM answer received, before it is cached). Unset, a check is one dict lookup.
"""
from __future__ import annotations

import errno
import os
import signal
import threading
import time

_hits: dict[str, int] = {}
_lock = threading.Lock()


def _plan() -> dict[str, tuple[int, str]]:
    out = {}
    for item in filter(None, os.environ.get("KBRIDGE_FAULT", "").split(",")):
        spec, _, action = item.strip().partition(":")
        point, _, nth = spec.partition("@")
        out[point] = (int(nth or 1), action or "kill")
    return out


def check(point: str) -> None:
    """Do the configured action if this is the configured hit of ``point``."""
    if "KBRIDGE_FAULT" not in os.environ:
        return
    plan = _plan().get(point)
    if plan is None:
        return
    with _lock:
        _hits[point] = n = _hits.get(point, 0) + 1
    if n != plan[0]:
        return
    action = plan[1]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    elif action == "raise":
        raise RuntimeError(f"injected fault at {point}")
    elif action == "hang":
        time.sleep(60)
    else:
        raise ValueError(f"KBRIDGE_FAULT: unknown action {action!r}")


def reset() -> None:
    """Forget the hit counts (tests that inject faults in-process)."""
    with _lock:
        _hits.clear()
