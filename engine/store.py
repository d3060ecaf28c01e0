"""The run directory: results, images, errors, manifest, and the SQLite response cache.

``results.jsonl`` gets one line per finished sample, written with a single ``write`` and fsync,
so a killed run leaves at most one torn last line, which the next open truncates. Images are
written to a temporary name and renamed before their result line is written. Re-opening the same
directory skips finished samples; a different configuration is refused. One run at a time holds
the directory (an ``fcntl`` lock on ``OUT/.lock``, released by the kernel on any exit). The
response cache checks every row it reads and rebuilds a cache file SQLite cannot read.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from kbridge.engine import faults, locks
from kbridge.engine.errors import KbridgeError
from kbridge.engine.rows import Row

log = logging.getLogger(__name__)


class RunConfigMismatch(KbridgeError):
    """The output directory holds a run made with another configuration."""


class RunInUse(KbridgeError):
    """Another kbridge process holds the output directory."""


def check_free(out: str | Path) -> None:
    """Raise RunInUse at once when another run holds ``out`` (the CLI asks before loading anything,
    so a second run fails in a second; RunStore takes the lock itself)."""
    pid = locks.held(Path(out) / ".lock")
    if pid is not None:
        raise RunInUse(f"{out} is in use by another kbridge run (pid {pid})")


def atomic_write(path: Path, data: bytes, fault: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if fault:
            faults.check(fault)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_line(path: Path, obj: dict) -> None:
    line = (json.dumps(obj, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    start = os.fstat(fd).st_size
    try:
        if os.environ.get("KBRIDGE_FAULT"):  # a disk filling up mid-line: half of it lands
            os.write(fd, line[:len(line) // 2])
            faults.check("append")
            os.write(fd, line[len(line) // 2:])
        elif os.write(fd, line) != len(line):
            raise OSError(errno.ENOSPC, "short write (disk full?)")
        os.fsync(fd)
    except OSError:
        os.ftruncate(fd, start)  # never leave a torn line behind a clean error
        raise
    finally:
        os.close(fd)


def repair_jsonl(path: Path) -> list[dict]:
    """Read complete lines; cut a torn (unterminated or unparsable) tail left by a kill."""
    if not path.exists():
        return []
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    rows, good = [], 0
    for line in data[:keep].splitlines(keepends=True):
        try:
            rows.append(json.loads(line))
            good += len(line)
        except ValueError:
            break
    if good != len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def _digest(key: str, value: str) -> str:
    return hashlib.sha256(f"{key}\0{value}".encode()).hexdigest()[:16]


class ResponseCache:
    """LMM answers keyed by request_key (model+revision, prompt version, schema, sampling, seed).

    Every row carries a digest of its key and value; a row that does not match (or does not
    parse) is reported once, dropped, and asked again. A file SQLite cannot read (truncated,
    overwritten) is reported, moved aside to ``cache.sqlite.corrupt`` and started afresh."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.warned = False
        try:
            self._open()
        except sqlite3.DatabaseError as e:
            log.warning("response cache %s is unreadable (%s); starting a new one", self.path, e)
            self._discard()
            self._open()

    def _open(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                            "digest TEXT NOT NULL)")
            if self.db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
        except sqlite3.DatabaseError:
            self.db.close()
            raise

    def _discard(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{self.path}{suffix}")
            if p.exists():
                os.replace(p, f"{self.path}.corrupt{suffix}")

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT value, digest FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            if _digest(key, row[0]) != row[1]:
                raise ValueError("digest mismatch")
            value = json.loads(row[0])
            if not isinstance(value, dict) or not isinstance(value.get("text"), str):
                raise ValueError("not an answer record")
            return value
        except ValueError as e:
            if not self.warned:
                log.warning("response cache %s: a corrupted entry (%s) is dropped and asked again", self.path, e)
                self.warned = True
            self.db.execute("DELETE FROM answers WHERE key = ?", (key,))
            return None

    def put(self, key: str, value: dict) -> None:
        faults.check("cache")
        blob = json.dumps(value)
        self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)", (key, blob, _digest(key, blob)))

    def close(self) -> None:
        self.db.close()


def png_bytes(image) -> bytes:
    """An image as lossless PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def candidate_dict(c, paths: dict[str, str]) -> dict:
    d = {"id": c.id, "source": c.source}
    if c.retriever is not None:
        d["retriever"] = c.retriever
    if c.id in paths:
        d["image"] = paths[c.id]
    elif c.text is not None:
        d["text"] = c.text
    if c.prompt is not None:
        d["prompt"] = c.prompt
    if c.seed is not None:
        d["seed"] = c.seed
    d["triples"] = [t.as_dict() for t in c.triples]
    if c.scores:
        d["scores"] = c.scores
    if c.refined is not None:
        d["refined"] = c.refined
    return d


def result_line(row: Row, paths: dict[str, str], t0: float, end: float) -> dict:
    """A finished row as one result: the results.jsonl line, and the body of a served result.
    ``paths``: candidate id → where its image is (a run-relative path, a URL, a data URI); timings
    are seconds from ``t0`` (the run's start, a request's arrival), the sample's span ending at ``end``."""
    s = row.sample
    line = {"sample_id": s.sample_id, "index": s.index, "missing": s.missing,
            "knowledge": row.knowledge.as_dict() if row.knowledge is not None else None,
            "candidates": [candidate_dict(c, paths) for c in row.candidates],
            "best": row.best, "counts": row.counts()}
    timings = row.timings_dict(t0)
    timings["sample"] = {"start": round(row.admitted - t0, 4), "end": round(end - t0, 4),
                         "seconds": round(end - row.admitted, 4)}
    line["timings"] = timings
    engine = lmm_engine(row)
    if engine:
        line["lmm_engine"] = engine
    return line


class BadLine(KbridgeError):
    """A results line that is not a finished sample's JSON object."""


def read_results(run_dir: str | Path, bad: Callable[[int, str], None] | None = None) -> Iterator[dict]:
    """The results lines of ``run_dir`` (results.jsonl), in file order, read line by line. A line
    that is not a JSON object with a sample id (a torn tail, a hand edit) goes to ``bad(line_no,
    why)``, or raises BadLine naming it when ``bad`` is None. No file: nothing."""
    path = Path(run_dir) / "results.jsonl"
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                why = "not a JSON object" if not isinstance(line, dict) else \
                    "no sample_id" if not isinstance(line.get("sample_id"), str) else None
            except ValueError:
                why = "not valid JSON"
            if why is None:
                yield line
            elif bad is None:
                raise BadLine(f"{path}: line {n}: {why}")
            else:
                bad(n, why)


def best_candidate(line: dict) -> dict:
    """The chosen candidate of a results line (KeyError / StopIteration when it has none)."""
    return next(c for c in line["candidates"] if c["id"] == line["best"])


def _image_rel(sample_id: str, cand_id: str) -> str:
    ds, _, idx = sample_id.rpartition(":")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ds)
    return f"images/{safe}/{idx}/{cand_id}.png"


class RunStore:
    def __init__(self, out: str | Path, config_hash: str, manifest: dict):
        self.root = Path(out)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = locks.try_lock(self.root / ".lock")
        if self._lock is None:
            raise RunInUse(f"{out} is in use by another kbridge run (pid {locks.holder(self.root / '.lock')})")
        try:
            self._open(config_hash, manifest)
        except BaseException:
            locks.unlock(self._lock)
            raise

    def _open(self, config_hash: str, manifest: dict) -> None:
        self.results_path = self.root / "results.jsonl"
        self.errors_path = self.root / "errors.jsonl"
        self.manifest_path = self.root / "manifest.json"
        if self.manifest_path.exists():
            old = json.loads(self.manifest_path.read_text())
            if old.get("config_hash") != config_hash:
                raise RunConfigMismatch(
                    f"{self.root} holds a run with another configuration (hash {old.get('config_hash')}, "
                    f"now {config_hash}); use another --out, or delete the directory to start over")
            manifest = {**old, **{k: v for k, v in manifest.items() if k not in ("totals", "created")}}
        self.manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **manifest, "config_hash": config_hash}
        self.write_manifest()
        # what resume needs: the finished ids (never the results themselves)
        self.finished = {r["sample_id"] for r in repair_jsonl(self.results_path)}
        repair_jsonl(self.errors_path)
        for tmp in [*(self.root / "images").glob("**/.*.png.*"), *self.root.glob(".manifest.json.*")]:
            tmp.unlink(missing_ok=True)  # a killed write's temporary file
        self.cache = ResponseCache(self.root / "cache.sqlite")

    def done(self) -> set[str]:
        return set(self.finished)

    def write_images(self, row: Row, base: Path | None = None) -> dict[str, str]:
        """Each image candidate as a PNG (temporary name, fsync, rename), before any line refers
        to it; returns candidate id → path relative to the run directory."""
        out = {}
        for c in row.candidates:
            if c.image is not None:
                rel = _image_rel(row.sample_id, c.id)
                if base is not None:
                    rel = f"{base.relative_to(self.root).as_posix()}/{rel}"
                atomic_write(self.root / rel, png_bytes(c.image))
                out[c.id] = rel
        return out

    def write_result(self, row: Row, t0: float, written: float | None = None) -> dict:
        """The row's results line (after its images), appended with one write and fsync."""
        paths = self.write_images(row)
        faults.check("result")
        line = result_line(row, paths, t0, written if written is not None else time.time())
        append_line(self.results_path, line)
        self.finished.add(row.sample_id)
        return line

    def write_error(self, sample_id: str, message: str, stage: str, detail: str = "") -> None:
        rec = {"sample_id": sample_id, "stage": stage, "error": message, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if detail:
            rec["traceback"] = detail
        append_line(self.errors_path, rec)

    def write_manifest(self, **updates) -> None:
        self.manifest.update(updates)
        atomic_write(self.manifest_path, (json.dumps(self.manifest, indent=1, default=str) + "\n").encode(),
                     fault="manifest")

    def close(self) -> None:
        try:
            self.cache.close()
        finally:
            locks.unlock(self._lock)
            self._lock = None


def export_completed(run_dir: Path, dataset, out: Path) -> dict:
    """Write the completed dataset in the reference layout: metadata.json with every sample that
    is complete or was completed (best candidate filled in), category.json, and the images."""
    from kbridge.engine.data import image_path

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    results = {r["index"]: r for r in read_results(run_dir, bad=lambda n, why: log.warning(
        "%s: results line %d skipped: %s", run_dir, n, why))}
    meta, skipped = [], 0
    for i, rec in enumerate(dataset.items):
        miss = dataset.missing.get(i)
        rec = dict(rec)
        if miss is not None:
            r = results.get(i)
            if r is None:
                skipped += 1
                continue
            best = best_candidate(r)
            if miss == "text":
                rec["captions"] = [best["text"]]
            else:
                name = f"images/completed_{i}.png"
                shutil.copyfile(Path(run_dir) / best["image"], out / name)
                rec["file_name"] = name
                meta.append(rec)
                continue
        src = image_path(dataset, rec["file_name"])
        name = f"images/{i}_{Path(rec['file_name']).name}"
        if src.exists():
            shutil.copyfile(src, out / name)
        rec["file_name"] = name
        meta.append(rec)
    atomic_write(out / "metadata.json", json.dumps(meta, indent=1).encode())
    cat = dataset.root / "category.json"
    if cat.exists():
        shutil.copyfile(cat, out / "category.json")
    return {"samples": len(meta), "skipped": skipped, "path": str(out)}


ENGINE_TIMES = ("queue_s", "prefill_s", "first_token_s", "decode_s")


def lmm_engine(row: Row) -> dict | None:
    """Where the row's LMM time went, by the engine's own account (in-process vLLM: queue / prefill /
    decode seconds) or the client's (over HTTP, streamed: ``timing: "client"``, queue / first-token /
    decode seconds): per fresh request its stage, turn, times and prompt tokens served from the
    prefix cache, and their sums. None when the backend reports nothing (hf)."""
    reqs = [{"stage": r.stage, "turn": r.turn, **r.engine} for r in row.lmm if r.engine and not r.cached]
    if not reqs:
        return None
    sums = {k: round(sum(q.get(k, 0.0) for q in reqs), 6) for k in ENGINE_TIMES if any(k in q for q in reqs)}
    return {**sums, "cached_prompt_tokens": sum(q.get("cached_prompt_tokens", 0) for q in reqs), "requests": reqs}
