"""OS-level file locks (``fcntl.flock``): released by the kernel when the process exits, however
it exits (a kill included), so a crashed run never leaves a stale lock behind."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path


def try_lock(path: Path) -> int | None:
    """Take an exclusive lock on ``path`` without waiting; write our pid into it. Returns the open
    descriptor (keep it open to hold the lock) or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def held(path: Path) -> str | None:
    """The holder's pid when another process holds the lock on ``path`` now, else None (a check
    that takes nothing: the lock itself is taken by ``try_lock``)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return holder(path)
    finally:
        os.close(fd)


def holder(path: Path) -> str:
    """The pid written by the lock's holder ("?" when unreadable)."""
    try:
        return Path(path).read_text().strip() or "?"
    except OSError:
        return "?"


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


@contextmanager
def exclusive(path: Path):
    """Wait for an exclusive lock on ``path`` (builds of one cache entry by several processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
