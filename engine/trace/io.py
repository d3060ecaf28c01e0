"""The trace file: a JSON array of events, written as a series of complete gzip members.

Each flush compresses the buffered events (one JSON object per line, each followed by ``,``) into
one gzip member and appends it with a single ``write``; the file's first member starts with ``[``.
Nothing ever closes the array: the Trace Event format makes the closing ``]`` optional, so the file
is loadable at any moment, including after ``kill -9`` (what was flushed is there). A plain ``.json``
path is written the same way without compression.

``read_events`` reads it back tolerantly: concatenated members, a member torn by a crash at the
tail (decoded up to the tear), a torn last line, and a trailing ``,`` or ``]``.
"""
from __future__ import annotations

import gzip
import json
import os
import threading
import zlib
from pathlib import Path
from typing import Iterator


def _gz(path: Path) -> bool:
    return str(path).endswith(".gz")


class TraceFile:
    """Appends events; a background thread compresses and writes them every ``flush_s`` seconds or
    as soon as ``flush_events`` are waiting, so no caller (the executor's event loop) ever waits
    for gzip or the disk."""

    def __init__(self, path: Path, flush_s: float = 1.0, flush_events: int = 512):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_s, self.flush_events = flush_s, flush_events
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.buf: list[str] = ["["] if fresh else []
        self.bytes = 0
        self.lock = threading.Lock()
        self.io_lock = threading.Lock()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="kbridge-trace-writer", daemon=True)
        self.thread.start()

    def add(self, line: str) -> None:
        """One event (JSON text); written by the background thread."""
        with self.lock:
            self.buf.append(line + ",")
            if len(self.buf) >= self.flush_events:
                self.wake.set()

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.wake.wait(self.flush_s)
            self.wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write what is buffered now, as one gzip member in one ``write``."""
        with self.io_lock:
            with self.lock:
                buf, self.buf = self.buf, []
            if not buf or self.fd is None:
                return
            data = ("\n".join(buf) + "\n").encode()
            if _gz(self.path):
                data = gzip.compress(data, compresslevel=6, mtime=0)
            os.write(self.fd, data)  # one member, one write: a kill never leaves half a member from here
            self.bytes += len(data)

    def close(self) -> None:
        self.stop.set()
        self.wake.set()
        self.thread.join()
        self.flush()
        with self.io_lock:
            if self.fd is not None:
                os.fsync(self.fd)
                os.close(self.fd)
                self.fd = None


def _text(path: Path) -> str:
    raw = Path(path).read_bytes()
    if not _gz(path) and raw[:2] != b"\x1f\x8b":
        return raw.decode("utf-8", errors="replace")
    out, data = [], raw
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out.append(d.decompress(data))
        except zlib.error:  # a torn member: keep what decoded cleanly before it
            break
        if not d.eof:  # truncated member (killed mid-write): its decoded part is kept, the tail cut below
            break
        data = d.unused_data
    return b"".join(out).decode("utf-8", errors="replace")


def read_events(path: str | Path) -> Iterator[dict]:
    """Every event in the file, in file order; a torn last line is skipped."""
    text = _text(Path(path))
    for line in text.splitlines():
        s = line.strip().lstrip("[").rstrip("]").strip().rstrip(",")
        if not s:
            continue
        try:
            ev = json.loads(s)
        except ValueError:
            continue
        if isinstance(ev, dict):
            yield ev


def read_header(path: str | Path) -> dict | None:
    """The trace's clock origin and how many runs wrote it (None: no trace there yet)."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return None
    origin, runs = None, 0
    for ev in read_events(p):
        if ev.get("ph") == "M" and ev.get("name") == "kbridge":
            args = ev.get("args") or {}
            origin = args.get("origin") if origin is None else origin
            runs = max(runs, int(args.get("run", 1)))
    return None if origin is None else {"origin": origin, "runs": runs}


def export_json(src: str | Path, dst: str | Path) -> Path:
    """A plain, closed JSON array (``{"traceEvents": [...]}``) for viewers that want one object."""
    dst = Path(dst)
    dst.write_text(json.dumps({"traceEvents": list(read_events(src)), "displayTimeUnit": "ms"}), encoding="utf-8")
    return dst
