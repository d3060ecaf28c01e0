"""Tracing a run: one Trace Event (Chrome JSON) file that Perfetto and ``chrome://tracing`` open.

    tr = Tracer(TraceOptions(Path("runs/x/trace.json.gz")))   # kbridge run --trace
    tr.call("render", "generators-cuda:0", rows_in, rows_out, a, b)   # a device span
    tr.row(row, written)                                       # the sample's spans + its LMM requests
    tr.close()

Tracks (``pid`` / ``tid`` of the format; every name is set with ``process_name`` / ``thread_name``):

- pid 1 *devices*: one track per worker (``generators-cuda:2``, ``scorer-cpu``, ``io``, ``lmm``),
  one span per stage call with its batch (sample ids, rows, candidates, UNet / VAE work, image
  size) as args, with ``unet ×N`` / ``vae decode`` spans nested in render calls (engine/trace/dense.py);
  overlapping calls of one worker (async LMM calls) go on lanes ``lmm #2`` …
  Counters on the same process: queue depth per stage, rows in flight, RSS, CUDA memory, NVML use.
- pid 2 *samples*: one span per sample (admitted → result written) with its stage spans and its
  ``wait <stage>`` gaps (queue waits) and the final ``sink`` (result written) nested inside. Samples go on lanes (a lane holds one sample
  at a time), so a 50k-sample run has as many sample tracks as rows in flight, not 50k.
- pid 3 *LMM requests*: one span per request (sample, stage, turn, tokens); where the backend
  reports the engine's figures (``LMMRecord.engine``: ``queue_s`` / ``prefill_s`` / ``decode_s``,
  vLLM; streamed HTTP answers: the client's ``queue_s`` / ``first_token_s`` / ``decode_s``) nested
  ``queued`` / ``prefill`` (``first token``) / ``decode`` spans, laid back from the answer's arrival
  (the client span also holds the network), else the client-side span alone.

Writing (``io.TraceFile``): events are buffered and a background thread appends them every second
(or 512 events) as one complete gzip member (one ``write``) holding JSON lines ``{...},``; the
first member starts with ``[``. A gzip file may be
a series of members (RFC 1952), and the Trace Event format allows the array's closing ``]`` to be
missing, so a killed run leaves a file that loads up to its last flush (at most ``flush_s``
seconds or ``flush_events`` events lost). A resumed run appends to the same file: the clock origin
is read from its first event, and the new run's tracks are new processes (``run 2 · devices`` …).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kbridge.engine.trace.io import TraceFile, read_header

DEVICES, SAMPLES, LMM = 1, 2, 3
"""Process ids of the three track groups (a resumed run adds 10 per earlier run)."""
MAX_IDS = 8
"""Sample ids listed in a device span's args (the batch size is always given)."""


@dataclass(frozen=True)
class TraceOptions:
    path: Path
    sample_every: int = 1
    """Per-sample and LMM-request spans for every N-th sample only (device spans and counters are
    always written): 1 by default; for 50k-sample runs see the README's profiling section."""
    counters_s: float = 1.0
    """Interval of the counter samples (queue depths, rows in flight, memory). Each sample wakes the
    executor's loop; on a CPU whose cores the dense stages' threads keep busy, every wake-up
    preempts one of them, so the interval is a second, not finer."""
    flush_s: float = 1.0
    flush_events: int = 512
    kernels: tuple[int, int] | None = None
    """``--trace-kernels N..M``: torch.profiler activity while samples N..M (admission order) run."""


def parse_window(text: str) -> tuple[int, int]:
    """``"N..M"`` (0-based, inclusive) → (N, M); ValueError with the reason."""
    a, sep, b = text.partition("..")
    if not sep or not a.strip().isdigit() or not b.strip().isdigit() or int(a) > int(b):
        raise ValueError(f"--trace-kernels {text!r}: expected N..M with 0 <= N <= M (sample positions)")
    return int(a), int(b)


def _us(t: float) -> int:
    return int(round(t * 1e6))


class _Lanes:
    """Tracks of one kind where a span may only start after the lane's previous span ended."""

    def __init__(self):
        self.ends: dict[str, list[int]] = {}

    def lane(self, name: str, a: int, b: int) -> int:
        ends = self.ends.setdefault(name, [])
        for i, e in enumerate(ends):
            if a >= e:
                ends[i] = b
                return i
        ends.append(b)
        return len(ends) - 1


class Tracer:
    """Thread-safe: the executor's event loop, stage worker threads and the writer thread call it."""

    def __init__(self, opts: TraceOptions, meta: dict | None = None):
        self.opts = opts
        self.lock = threading.Lock()
        header = read_header(opts.path)
        self.run = (header or {}).get("runs", 0) + 1
        self.origin = (header or {}).get("origin", time.time())
        self.file = TraceFile(opts.path, opts.flush_s, opts.flush_events)
        self.base = 10 * (self.run - 1)
        self.tids: dict[tuple[int, str], int] = {}
        self.lanes = _Lanes()
        self.samples = 0
        self.events = 0
        from kbridge.engine.trace.dense import DenseSpans

        self.dense = DenseSpans()
        """UNet / VAE spans inside render calls (hooks on the generators, removed on close)."""
        self.last_counters: dict[str, dict] = {}
        self.remote: set[tuple] = set()
        """Ray workers' calls already drawn (every row of a call carries it)."""
        self.kernels = None
        if opts.kernels is not None:
            from kbridge.engine.trace.kernels import KernelWindow

            self.kernels = KernelWindow(self, *opts.kernels)
        self._emit({"ph": "M", "name": "kbridge", "pid": 0, "tid": 0,
                    "args": {"origin": self.origin, "run": self.run, "start": time.time(), **(meta or {})}})
        suffix = f"run {self.run} · " if self.run > 1 else ""
        for pid, name in ((DEVICES, "devices"), (SAMPLES, "samples"), (LMM, "LMM requests")):
            self._emit({"ph": "M", "name": "process_name", "pid": self.base + pid, "tid": 0,
                        "args": {"name": f"{suffix}{name}"}})
            self._emit({"ph": "M", "name": "process_sort_index", "pid": self.base + pid, "tid": 0,
                        "args": {"sort_index": self.base + pid}})
        from kbridge.engine.trace import otel

        self.otel = otel.OtelBridge.create() if otel.enabled() else None
        self.closed = False

    # ---- low level
    def ts(self, t: float) -> int:
        """``time.time()`` → microseconds on the trace's clock."""
        return _us(t - self.origin)

    def _emit(self, ev: dict) -> None:
        self.events += 1
        self.file.add(json.dumps(ev, separators=(",", ":")))

    def _tid(self, pid: int, name: str) -> int:
        key = (pid, name)
        tid = self.tids.get(key)
        if tid is None:
            tid = self.tids[key] = len([k for k in self.tids if k[0] == pid]) + 1
            self._emit({"ph": "M", "name": "thread_name", "pid": self.base + pid, "tid": tid, "args": {"name": name}})
            self._emit({"ph": "M", "name": "thread_sort_index", "pid": self.base + pid, "tid": tid,
                        "args": {"sort_index": tid}})
        return tid

    def _span(self, pid: int, track: str, name: str, a: int, b: int, args: dict | None = None,
              children: list[tuple[str, int, int, dict | None]] = ()) -> None:
        """A span (and spans nested inside it, category ``detail``) on the first lane of ``track``
        free at ``a``."""
        lane = self.lanes.lane(f"{pid}:{track}", a, b)
        tid = self._tid(pid, track if lane == 0 else f"{track} #{lane + 1}")
        ev = {"ph": "X", "name": name, "pid": self.base + pid, "tid": tid, "ts": a, "dur": b - a}
        if args:
            ev["args"] = args
        self._emit(ev)
        for cname, ca, cb, cargs in children:
            ev = {"ph": "X", "name": cname, "cat": "detail", "pid": self.base + pid, "tid": tid, "ts": ca,
                  "dur": cb - ca}
            if cargs:
                ev["args"] = cargs
            self._emit(ev)

    # ---- what the executors call
    def instrument(self, generator, worker: str) -> None:
        """UNet / VAE spans of ``generator``'s render calls on ``worker``'s track."""
        self.dense.instrument(generator, worker)

    def call(self, stage: str, worker: str, rows_in, rows_out, a: float, b: float) -> list:
        """One stage call on one worker (device span), its batch as args, and the UNet / VAE
        spans it ran (clamped into the call). Returns ``rows_out`` (engine/stages: the trace hook)."""
        args = batch_args(rows_in, rows_out)
        sa, sb = self.ts(a), self.ts(b)
        kids = [(n, min(max(self.ts(x), sa), sb), min(max(self.ts(y), sa), sb), k)
                for n, x, y, k in self.dense.take(worker, b)]
        kids = [(n, x, max(x, y), k) for n, x, y, k in kids]
        with self.lock:
            self._span(DEVICES, worker, stage, sa, sb, args, kids)
        if self.otel is not None:
            self.otel.span(f"{stage} call", a, b, {"kbridge.worker": worker, "kbridge.rows": args["n"]})
        return rows_out

    def admitted(self, row) -> None:
        if self.kernels is not None:
            self.kernels.admitted(row)

    def row(self, row, written: float | None = None) -> None:
        """A finished row (result or failure): its sample span, stages, waits, LMM requests."""
        written = written if written is not None else time.time()
        with self.lock:
            n = self.samples
            self.samples += 1
            if n % max(1, self.opts.sample_every) == 0:
                self._sample(row, written)
                self._requests(row)
            for c in row.trace_calls:  # device spans recorded by Ray workers
                self._remote_call(c)
        if self.otel is not None:
            self.otel.sample(row, written)
        if self.kernels is not None:
            self.kernels.finished(row)

    def _sample(self, row, written: float) -> None:
        start = row.admitted or min((a for _, a, _ in row.timings), default=written)
        a0, end = self.ts(start), max(self.ts(written), self.ts(max((b for _, _, b in row.timings), default=start)))
        kids, t = [], a0
        for stage, a, b in sorted(row.timings, key=lambda s: (s[1], s[2])):
            sa, sb = self.ts(a), self.ts(b)
            if sa < t:  # never happens in one executor; guards against a clock step
                sa = t
            if sa - t > 0:
                kids.append((f"wait {stage}", t, sa, None))
            sb = max(sb, sa)
            kids.append((stage, sa, sb, None))
            t = sb
        if end - t > 0:
            kids.append(("sink", t, end, None))
        args = {"id": row.sample_id, "missing": row.missing}
        if row.error is not None:
            args["error"] = f"{row.error.stage}: {row.error.message}"[:160]
        self._span(SAMPLES, "samples", "sample", a0, end, args, kids)

    def _requests(self, row) -> None:
        calls: dict[tuple, list] = {}
        for r in row.lmm:
            if not r.cached:
                calls.setdefault((r.stage, r.turn, r.start, r.end), []).append(r)
        for (stage, turn, a, b), recs in sorted(calls.items(), key=lambda kv: kv[0][2]):
            for r in recs:
                sa, sb = self.ts(a), self.ts(b)
                kids, t = [], sb
                eng = getattr(r, "engine", None) or {}
                for part, key in (("decode", "decode_s"), ("first token", "first_token_s"), ("prefill", "prefill_s"),
                                  ("queued", "queue_s")):
                    sec = eng.get(key)  # the engine's (vLLM) or the client's figures, laid back from the answer
                    if key == "first_token_s" and "prefill_s" in eng:
                        continue  # the engine's own queue + prefill split it already
                    if isinstance(sec, (int, float)) and sec > 0:
                        ps = max(sa, t - _us(sec))
                        kids.insert(0, (part, ps, t, None))
                        t = ps
                self._span(LMM, "requests", stage, sa, sb,
                           {"id": row.sample_id, "turn": turn, "tok": [r.prompt_tokens, r.generated_tokens]}, kids)

    def _remote_call(self, c: list) -> None:
        stage, worker, a, b, args = c
        key = (worker, stage, a, b)
        if key in self.remote:
            return
        self.remote.add(key)
        self._span(DEVICES, worker, stage, self.ts(a), self.ts(b), args)

    def counters(self, values: dict[str, dict]) -> None:
        """Counter samples now: {counter name: {series: value}}; a counter is written only when it
        changed (a viewer holds a counter's value until its next event)."""
        now = self.ts(time.time())
        with self.lock:
            for name, series in values.items():
                if series and self.last_counters.get(name) != series:
                    self.last_counters[name] = series
                    self._emit({"ph": "C", "name": name, "pid": self.base + DEVICES, "tid": 0, "ts": now,
                                "args": series})

    def merge(self, events: list[dict]) -> None:
        """Foreign events already on this trace's clock (torch.profiler's window)."""
        with self.lock:
            for ev in events:
                self._emit(ev)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.kernels is not None:
            self.kernels.stop()
        self.dense.remove()
        with self.lock:
            self.file.close()
        if self.otel is not None:
            self.otel.close()


def batch_args(rows_in, rows_out) -> dict:
    """A stage call's batch: rows, sample ids (first few), missing kinds, candidates, dense work."""
    ids = [r.sample_id for r in rows_in]
    args: dict = {"n": len(ids), "ids": ids[:MAX_IDS]}
    kinds = {}
    for r in rows_in:
        kinds[r.missing] = kinds.get(r.missing, 0) + 1
    args["missing"] = kinds
    done = {r.sample_id: r for r in rows_out}
    unet = vae = 0.0
    cands = 0
    size = None
    for r in rows_in:
        o = done.get(r.sample_id)
        if o is None:
            continue
        unet += o.unet_evals - r.unet_evals
        vae += o.vae_decodes - r.vae_decodes
        new = [c for c in o.candidates if c.image is not None] if o.missing == "image" else []
        cands += len(o.candidates)
        if size is None and new:
            size = list(new[0].image.size)
    if unet:
        args["unet"] = round(unet, 2)
    if vae:
        args["vae"] = round(vae, 2)
    if cands:
        args["cands"] = cands
    if size:
        args["wh"] = size
    return args


class InRows:
    """The trace hook of a stage call made in another process (a Ray actor): the call is recorded
    in each output row, and drawn by the driver's tracer when the row reaches the sink (once per
    call)."""

    def call(self, stage: str, worker: str, rows_in, rows_out, a: float, b: float) -> list:
        rec = (stage, worker, a, b, batch_args(rows_in, rows_out))
        return [r.replace(trace_calls=(*r.trace_calls, rec)) for r in rows_out]


def default_path(run_dir: Path) -> Path:
    return Path(run_dir) / "trace.json.gz"
