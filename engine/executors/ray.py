"""``--executor ray``: the stages of engine/stages as Ray Data operators, results back to the driver.

- The driver builds a Ray dataset from the samples still to do (finished ones are skipped as in
  the local executor) and streams the results back with ``iter_batches`` into the same sink
  (engine/executors/sink.py), so the run directory, resume and ``--export-completed`` do not change.
- Consecutive stages that use the same model slot form one operator (one ``map_batches`` over a
  callable class): load (I/O) → extract + write (LMM) → render (generators) → candidate
  knowledge (LMM) → retrieve + rank (scorer). Each actor loads its slot's models once, through
  the engine's loaders passed in its ``Spec`` (lazily: a render actor that never sees an image-missing
  row never loads SDXL), and calls the unchanged stage functions on its rows.
- Rows travel as bytes (``encode``/``decode``): the JSON row of engine/executors/phased.py, the sample's image
  and every candidate image as lossless PNG bytes, and the failure, so per-sample errors stay a
  row field and never fail a Ray task.
- Resources come from engine/executors/ray_plan.py: fractional CPUs on every actor (two 1-CPU actor stages on
  a 2-CPU cluster deadlock, ray#44687), ``num_gpus`` only where the plan puts a model on a GPU.
  Ray's own actor restarts and task retries cover lost workers; a retried block's rows are
  written once because the sink skips sample ids already finished.
- Response cache: one Ray actor on the driver's node owns the run's ``cache.sqlite``; LMM actors
  read and write through it, so every actor, and a resumed run, sees every answer.
- The LMM engine dies (its server is gone, an in-process engine core died: the backend's ``dead``):
  the LMM actor that sees it tells the run's gate (a second small actor on the driver's node); the
  load and LMM operators ask the gate once per batch (not per row) and from then on start no row:
  a row that made no LMM request yet comes back *held* (``HELD``: no result, no error line, left to
  a re-run), a row already in flight fails at its next LMM stage with one line. The driver then
  ends the run with ``report.stopped``, as the local executor does (``kbridge run`` exits 3).
"""
from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import pickle
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

from kbridge.engine.config import ConfigError
from kbridge.engine.errors import Unavailable
from kbridge.engine.lmm import engine_dead
from kbridge.engine.lmm.vllm_http import HTTPBackend, LMMUnavailable
from kbridge.engine.executors.phased import row_from_json, row_to_json
from kbridge.engine.executors.ray_plan import Operator, operators
from kbridge.engine.rows import Failure, Row
from kbridge.engine.stages import STAGES, Ctx, failure, passes, run_stage
from kbridge.engine.store import png_bytes
from kbridge.engine.trace import InRows
from kbridge.engine.types import Sample

log = logging.getLogger(__name__)


class RayUnavailable(Unavailable):
    """Ray is not installed (the ``ray`` extra) or the cluster cannot be reached."""


HELD = "not started"
"""The failure stage of a row that no operator started because the LMM engine had died: the driver
writes it nowhere (no result, no error line), so a re-run starts it."""


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailable("--executor ray needs Ray Data: pip install 'kbridge[ray]'") from None
    return ray


# ---- rows as bytes -------------------------------------------------------------------------------

def _unpng(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.copy()


def encode(row: Row) -> bytes:
    """A row as bytes: plain JSON-able values plus PNG bytes for the images (lossless)."""
    d = row_to_json(row, {})
    d["png"] = {c.id: png_bytes(c.image) for c in row.candidates if c.image is not None}
    d["sample_png"] = png_bytes(row.sample.image) if row.sample.image is not None else None
    d["error"] = None if row.error is None else [row.error.stage, row.error.message, row.error.detail]
    return pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL)


def decode(blob: bytes) -> Row:
    d = pickle.loads(blob)
    row = row_from_json(d)
    cands = tuple(replace(c, image=_unpng(d["png"][c.id])) if c.id in d["png"] else c for c in row.candidates)
    sample = row.sample if d["sample_png"] is None else replace(row.sample, image=_unpng(d["sample_png"]))
    err = None if d["error"] is None else Failure(*d["error"])
    return row.replace(sample=sample, candidates=cands, error=err)


# ---- what every actor gets -----------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    cfg: object
    dataset: object
    """The opened dataset (its root must be readable from every node: a shared path)."""
    run_dir: str
    loaders: dict = field(default_factory=dict)
    """The engine's model loaders, slot → ``loader(cfg)`` (``Engine.loaders``: a test's fakes too);
    each actor calls its slot's with the actor's own config (``cuda:0`` where Ray gave it a GPU)."""
    cache: object = None
    """Handle of the cache actor, or None (``lmm.cache`` off)."""
    trace: bool = False
    """``--trace``: each stage call is recorded in its rows (``Row.trace_calls``) for the
    driver's trace (engine/trace: worker ``<slot> pid<N>@<node>``, the node's own clock)."""
    gate: object = None
    """Handle of the run's gate actor (``_Gate``: whether the LMM engine died), or None."""


class _Cache:
    """The run's response cache, in one actor on the driver's node (runs as a Ray actor)."""

    def __init__(self, path: str):
        from kbridge.engine.store import ResponseCache

        self.c = ResponseCache(Path(path))

    def get(self, key: str):
        return self.c.get(key)

    def put(self, key: str, value: dict) -> None:
        self.c.put(key, value)

    def close(self) -> bool:
        self.c.close()
        return True


class _Gate:
    """Whether the LMM engine died, and why (the first LMM actor to see it says so; runs as a Ray actor)."""

    def __init__(self):
        self.reason: str | None = None

    def died(self, reason: str) -> str:
        self.reason = self.reason or reason
        return self.reason

    def dead(self) -> str | None:
        return self.reason


def _started(row: Row) -> bool:
    """The row has made LMM requests already (it is in flight, not waiting to start)."""
    return any(STAGES[name].kind == "lmm" for name, _, _ in row.timings if name in STAGES)


def _stop(row: Row, stage: str, reason: str) -> Row:
    """A row reaching ``stage`` after the LMM engine died: held if it has not started, else failed."""
    if _started(row):
        return row.fail(stage, f"the LMM engine died: {reason}")
    return row.fail(HELD, reason)


class CacheProxy:
    """What the LMM client sees inside an actor (one round trip per answer, small beside an LMM call)."""

    def __init__(self, handle):
        self.h = handle

    def get(self, key: str):
        import ray

        return ray.get(self.h.get.remote(key))

    def put(self, key: str, value: dict) -> None:
        import ray

        ray.get(self.h.put.remote(key, value))  # stored before the row moves on (a killed actor loses nothing)


def _node() -> str:
    import ray

    return ray.util.get_node_ip_address()


def _on_gpu(cfg, slot: str):
    """The config seen inside an actor that Ray gave a GPU: its slot's model on ``cuda:0`` (Ray
    sets CUDA_VISIBLE_DEVICES to the GPU it assigned)."""
    import ray

    if not ray.get_gpu_ids():
        return cfg
    if slot == "generators":
        return replace(cfg, generation=replace(cfg.generation, device="cuda:0", devices=()),
                       medical=replace(cfg.medical, device="cuda:0", devices=()))
    if slot == "scorer":
        return replace(cfg, rank=replace(cfg.rank, device="cuda:0"))
    if slot == "lmm":
        return replace(cfg, lmm=replace(cfg.lmm, device="cuda:0"))
    return cfg


class StageActor:
    """One operator: its stages run over each batch of rows, in the stages' own micro-batches."""

    def __init__(self, spec: Spec, names: tuple[str, ...]):
        from kbridge.engine.domains import domain_of

        self.stages = [STAGES[n] for n in names]
        self.slot = next((s.slot for s in self.stages if s.slot), None)
        cfg = self.cfg = _on_gpu(spec.cfg, self.slot)
        if cfg.run.threads:
            import torch

            torch.set_num_threads(cfg.run.threads)
        self.spec = spec
        self.admits = self.slot == "lmm" or names[0] == "load"
        """This operator starts rows (the first one, and the LMM ones): it asks the gate per batch."""
        self.ctx = Ctx(cfg=cfg, domain=domain_of(cfg), models=None, dataset=spec.dataset)
        """Until the first stage call that needs the operator's models (``_ready``)."""
        self.loop = asyncio.new_event_loop()

    def _ready(self) -> Ctx:
        """Load this operator's models on first use (once per actor)."""
        if self.ctx.models is not None or self.slot is None:
            return self.ctx
        from kbridge.engine.models import Models, make_context, quiet_libraries

        quiet_libraries()
        models = Models(**{self.slot: self.spec.loaders[self.slot](self.cfg)})
        cache = CacheProxy(self.spec.cache) if self.spec.cache is not None and self.slot == "lmm" else None
        retrieve = any(s.name == "retrieve" for s in self.stages)
        ctx = make_context(self.cfg, models, Path(self.spec.run_dir) if retrieve else None, cache,
                           dataset=self.spec.dataset)
        gen = ctx.models.generators[0] if self.slot == "generators" and ctx.models.generators else None
        self.ctx = replace(ctx, generator=gen, trace=InRows() if self.spec.trace else None)
        return self.ctx

    def _dead(self) -> str | None:
        """Why the LMM engine is dead (this actor's own backend, else the gate: one round trip per
        batch), or None."""
        own = engine_dead(self.ctx.models.lmm) if self.ctx.models is not None else None
        if own or self.spec.gate is None:
            return own
        import ray

        return ray.get(self.spec.gate.dead.remote())

    def _died(self, reason: str) -> str:
        """Tell the gate (every other operator stops starting rows at its next batch)."""
        if self.spec.gate is None:
            return reason
        import ray

        return ray.get(self.spec.gate.died.remote(reason))

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        rows = [decode(b) for b in batch["row"]]
        now = time.time()
        rows = [r if r.admitted else r.replace(admitted=now) for r in rows]
        worker = f"{self.slot or 'io'} pid{os.getpid()}@{_node()}"
        dead = self._dead() if self.admits else None
        for st in self.stages:
            if all(passes(st, r, self.cfg) for r in rows):
                continue
            if dead:  # the LMM engine died: nothing new starts, the rows in flight fail here
                rows = [r if passes(st, r, self.cfg) else _stop(r, st.name, dead) for r in rows]
                continue
            try:
                ctx = self._ready()  # the first call loads the models: not the stage's time
            except Exception as e:  # noqa: BLE001 - a model that cannot load fails these rows, not the actor
                if self.slot == "lmm" and isinstance(e, LMMUnavailable):  # a new LMM actor finds the server gone
                    dead = self._died(str(e))
                    rows = [r if passes(st, r, self.cfg) else _stop(r, st.name, dead) for r in rows]
                    continue
                log.debug("loading %s failed", self.slot, exc_info=True)
                msg, tb = failure(st.name, e, self.cfg.run.stage_timeout_s), traceback.format_exc()
                rows = [r if passes(st, r, self.cfg) else r.fail(st.name, msg, tb) for r in rows]
                continue
            rows = self.loop.run_until_complete(run_stage(st, rows, ctx, worker))
            if self.slot == "lmm" and engine_dead(ctx.models.lmm):  # the rows of this call failed with their lines
                dead = self._died(engine_dead(ctx.models.lmm))
        return {"sample_id": np.array([r.sample_id for r in rows], dtype=object),
                "row": np.array([encode(r) for r in rows], dtype=object)}


# ---- the driver ----------------------------------------------------------------------------------

def manifest(cfg, address: str | None) -> dict:
    """What the manifest records about Ray; refuses what the Ray executor cannot run before the run
    directory is touched (RayUnavailable without the extra, ConfigError for the configuration)."""
    from kbridge.engine.plan import resolve_schedule

    ray = _ray()
    if cfg.lmm.backend != "http" and str(cfg.lmm.device).startswith("cuda"):
        raise ConfigError("--executor ray on GPUs needs --lmm URL: the LMM stages are clients of one shared "
                          "OpenAI-compatible server (kbridge lmm serve, or vllm serve)")
    if resolve_schedule(cfg) == "phased":
        raise ConfigError("--executor ray runs every stage as one streaming Ray pipeline; use --schedule fused "
                          "(the LMM server is outside Ray) or the local executor for a phased run")
    if cfg.lmm.backend == "http":  # the LMM actors are its clients: a server not there stops the run now, as locally
        HTTPBackend(cfg.lmm)  # GET /models: LMMUnavailable with the reason
    return {"ray": {"version": ray.__version__, "address": address or "local",
                    "operators": [{"stages": list(op.stages), "num_cpus": op.num_cpus, "num_gpus": op.num_gpus,
                                   "actors": op.actors} for op in operators(cfg)]}}


def connect(address: str | None) -> bool:
    """Join ``address``, reuse a connection this process already has, or start a local instance
    sized to the machine. Returns True when this call started it (and so must stop it)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
    try:
        ray.init(address=address, **kw) if address else ray.init(**kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {e}") from None
    return True


def busy_seconds(rows_timings) -> dict:
    """Wall seconds with at least one call of a stage in flight, from the rows' own timings
    ((stage, start, end); the rows of one call share theirs and count once)."""
    spans: dict[str, set[tuple[float, float]]] = {}
    for stage, a, b in rows_timings:
        spans.setdefault(stage, set()).add((a, b))
    out = {}
    for stage, iv in spans.items():
        total, end = 0.0, -math.inf
        for a, b in sorted(set(iv)):
            if b > end:
                total += b - max(a, end)
                end = b
        out[stage] = total
    return out


def pipeline(ray, spec: Spec, rows: list[Row], ops: list[Operator]):
    """The Ray dataset: rows in blocks of ``run.batch_size``, one ``map_batches`` per operator."""
    bs = max(1, spec.cfg.run.batch_size)
    items = [{"sample_id": r.sample_id, "row": encode(r)} for r in rows]
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / bs)))
    for op in ops:
        pool = ray.data.ActorPoolStrategy(size=1) if op.actors == 1 else \
            ray.data.ActorPoolStrategy(min_size=1, max_size=op.actors)
        ds = ds.map_batches(StageActor, fn_constructor_args=(spec, op.stages), batch_size=bs, batch_format="numpy",
                            compute=pool, num_cpus=op.num_cpus, num_gpus=op.num_gpus or None)
    return ds


def execute(eng, store, ds, todo: list[int], schedule: str, report, t_start: float, on_sample,
            address: str | None = None) -> None:
    """Run ``todo`` through the stage operators on Ray; every finished row goes to the run's sink."""
    from kbridge.engine.executors.sink import ResultSink

    ray = _ray()
    cfg = eng.cfg
    started = connect(address)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no per-dataset chatter on the CLI's stderr
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # kbridge run has its own progress bar
    ctx.execution_options.preserve_order = False  # results stream in completion order
    cache = gate = None
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        if cfg.lmm.cache:
            cache = ray.remote(num_cpus=0, scheduling_strategy=here)(_Cache).remote(str(store.root / "cache.sqlite"))
        gate = ray.remote(num_cpus=0, scheduling_strategy=here)(_Gate).remote()
        spec = Spec(cfg, ds, str(store.root.resolve()), dict(eng.loaders), cache, trace=eng.tracer is not None,
                    gate=gate)
        rows = [Row(Sample(f"{ds.name}:{i}", i, None, None, ds.missing.get(i))) for i in todo]
        sink = ResultSink(store, report, t_start, on_sample, log.isEnabledFor(logging.DEBUG), eng.tracer)
        timings: set[tuple] = set()  # one entry per stage call, not per row
        seen: set[str] = set()
        stopped: str | None = None  # the LMM engine died: the reason the held rows carry
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        gpus = int(ray.cluster_resources().get("GPU", 0))
        ops = operators(cfg, max(1, nodes), render_actors=gpus or None)
        for batch in pipeline(ray, spec, rows, ops).iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["row"]:
                row = decode(blob)
                if row.error is not None and row.error.stage == HELD:  # never started: left to a re-run
                    stopped = stopped or row.error.message
                    continue
                if row.sample_id in seen or row.sample_id in store.finished:  # a retried block's row, written once
                    continue
                seen.add(row.sample_id)
                timings.update(row.timings)
                sink(row)
        busy = busy_seconds(timings)
        report.stopped = stopped
        sink.close({name: busy[name] for name in STAGES if name in busy})  # in pipeline order
    finally:
        if gate is not None:
            ray.kill(gate)
        if cache is not None:
            try:
                ray.get(cache.close.remote(), timeout=30)
            finally:
                ray.kill(cache)
        if started:
            ray.shutdown()
