"""Validation of a trace against the Trace Event format rules kbridge relies on (used by tests
and by ``kbridge profile --check``): every event has a phase and the fields its phase needs,
every ``B`` has its ``E``, complete spans nest per track, timestamps never go back per track."""
from __future__ import annotations

from collections import defaultdict

PHASES = {"X", "B", "E", "C", "M", "i", "I", "b", "e", "n", "s", "t", "f"}


def problems(events, limit: int = 20) -> list[str]:
    """What is wrong with ``events`` (an empty list: nothing)."""
    out: list[str] = []
    last: dict[tuple, float] = {}
    stack: dict[tuple, list[float]] = defaultdict(list)
    begins: dict[tuple, list[str]] = defaultdict(list)
    for n, e in enumerate(events):
        if len(out) >= limit:
            break
        ph = e.get("ph")
        if ph not in PHASES:
            out.append(f"event {n}: unknown phase {ph!r}")
            continue
        if ph == "M":
            if "args" not in e:
                out.append(f"event {n}: metadata without args")
            continue
        track = (e.get("pid"), e.get("tid"))
        ts = e.get("ts")
        if not isinstance(ts, (int, float)):
            out.append(f"event {n}: no timestamp")
            continue
        if ph == "C":
            track = (e.get("pid"), "counter", e.get("name"))
        if ts < last.get(track, float("-inf")):
            out.append(f"event {n} ({e.get('name')}): timestamp {ts} goes back on track {track}")
        last[track] = ts
        if ph == "X":
            dur = e.get("dur")
            if not isinstance(dur, (int, float)) or dur < 0:
                out.append(f"event {n} ({e.get('name')}): complete event without a duration >= 0")
                continue
            st = stack[track]
            while st and st[-1] <= ts:
                st.pop()
            if st and ts + dur > st[-1]:
                out.append(f"event {n} ({e.get('name')}): [{ts}, {ts + dur}] overlaps its parent ending at "
                           f"{st[-1]} on track {track}")
            st.append(ts + dur)
        elif ph == "B":
            begins[track].append(e.get("name"))
        elif ph == "E":
            if not begins[track]:
                out.append(f"event {n}: E without B on track {track}")
            else:
                begins[track].pop()
    for track, names in begins.items():
        if names and len(out) < limit:
            out.append(f"track {track}: {len(names)} B without E ({names[-1]})")
    return out
