"""The Ray layout: which stages form which Ray Data operator, with what resources and how many actors.

Consecutive stages of engine/stages that use the same model slot form one operator, so each actor
holds one model copy: load (I/O) → extract + write (LMM) → render (generators) → candidate
knowledge (LMM) → retrieve + rank (scorer). Resources per actor:

- CPUs: always fractional (``CPU_PER_ACTOR``): with whole CPUs, actor stages can take every CPU
  and starve the read tasks (ray#44687).
- GPUs: from the memory plan (engine/plan.py): a render actor asks for the share of its GPU that a
  diffusion worker needs, the scorer for CLIP's share, so Ray packs them as the plan places them
  (a fraction of one card for both on an 80 GB GPU). Nothing asks for a GPU when the config puts
  the model on the CPU (a GPU request on a GPU-less cluster would wait forever).
- LMM stages never ask for a GPU: with ``--lmm URL`` they are HTTP clients of one shared
  OpenAI-compatible server (one model copy, continuous batching and prefix caching across every
  LMM stage and actor); otherwise (CPU tests) the hf backend runs inside each LMM actor.
"""
from __future__ import annotations

from dataclasses import dataclass

from kbridge.engine.config import ConfigError, PipelineConfig
from kbridge.engine.stages import GRAPH

CPU_PER_ACTOR = 0.25
HTTP_ACTORS_PER_NODE = 2
"""LMM client actors per node with ``--lmm URL`` (each sends its rows' requests concurrently)."""


@dataclass(frozen=True)
class Operator:
    stages: tuple[str, ...]
    slot: str | None
    num_cpus: float
    num_gpus: float
    actors: int
    """Most actors in the pool (Ray Data autoscales from 1 up to this)."""


def segments() -> list[tuple[tuple[str, ...], str | None]]:
    """GRAPH cut into runs of consecutive stages with the same model slot."""
    out: list[tuple[list[str], str | None]] = []
    for st in GRAPH:
        if out and out[-1][1] == st.slot and st.slot is not None:
            out[-1][0].append(st.name)
        else:
            out.append(([st.name], st.slot))
    return [(tuple(names), slot) for names, slot in out]


def _on_gpu(device: str) -> bool:
    return str(device).startswith("cuda")


def _diffusion_devices(cfg: PipelineConfig) -> tuple[str, ...]:
    from kbridge.engine.models import render_devices

    return render_devices(cfg)


def gpu_shares(cfg: PipelineConfig, gpu_gb: float | None = None) -> dict:
    """``num_gpus`` per render and scorer actor: the plan's GB of the role over the GPU's size
    (0 when the config puts the model on the CPU)."""
    from kbridge.engine.plan import default_gpus, needs

    diff_gpu = any(_on_gpu(d) for d in _diffusion_devices(cfg))
    rank_gpu = _on_gpu(cfg.rank.device)
    if not (diff_gpu or rank_gpu):
        return {"render": 0.0, "scorer": 0.0}
    if gpu_gb is None:
        try:
            gpu_gb = default_gpus(cfg)[0].total_gb
        except ConfigError:
            gpu_gb = 80.0
    n = needs(cfg)
    return {"render": round(min(1.0, n["diffusion"] / gpu_gb), 2) if diff_gpu else 0.0,
            "scorer": round(max(0.01, n["scorer"] / gpu_gb), 2) if rank_gpu else 0.0}


def operators(cfg: PipelineConfig, nodes: int = 1, gpu_gb: float | None = None,
              render_per_node: int | None = None, render_actors: int | None = None) -> list[Operator]:
    """The operators of a run on ``nodes`` nodes. Render actors: one per diffusion GPU per node, or
    ``render_actors`` (a running cluster: one per GPU Ray sees)."""
    share = gpu_shares(cfg, gpu_gb)
    http = cfg.lmm.backend == "http"
    ops = []
    for names, slot in segments():
        gpus, actors = 0.0, nodes
        if slot == "generators":
            gpus = share["render"]
            per_node = render_per_node if render_per_node is not None else len(_diffusion_devices(cfg))
            actors = (render_actors or max(1, per_node * nodes)) if gpus else nodes
        elif slot == "scorer":
            gpus = share["scorer"]
        elif slot == "lmm":
            actors = HTTP_ACTORS_PER_NODE * nodes if http else nodes
        ops.append(Operator(names, slot, CPU_PER_ACTOR, gpus, actors))
    return ops


def ray_layout(cfg: PipelineConfig, nodes: int, node_gpus: list) -> dict:
    """The actor layout of ``--executor ray`` on ``nodes`` nodes with ``node_gpus`` each: the
    per-node memory plan decides which GPUs the LMM server takes (outside Ray, shared by every LMM
    actor over HTTP) and which the render actors get; the operators follow."""
    from dataclasses import replace

    from kbridge.engine.plan import devices_of, make_plan

    plan = make_plan(cfg, node_gpus)
    lmm, diff = devices_of(plan, "lmm"), devices_of(plan, "diffusion")
    if plan["schedule"] == "phased":
        raise ConfigError(f"the LMM and SDXL do not fit side by side on {len(node_gpus)} × "
                          f"{node_gpus[0].total_gb:g} GB (the plan is phased); --executor ray streams every stage "
                          "at once: use a profile whose LMM fits beside SDXL, or the local executor's phased schedule")
    shared = [d for d in lmm if d in diff]
    ray_gpus = [g.device for g in node_gpus if g.device in diff or g.device not in lmm]
    ops = operators(replace(cfg, lmm=replace(cfg.lmm, backend="http")), nodes, node_gpus[0].total_gb, len(diff))
    visible = ",".join(d.split(":")[1] for d in ray_gpus)
    return {"nodes": nodes, "gpus_per_node": len(node_gpus), "gpu_gb": node_gpus[0].total_gb,
            "lmm_server": {"devices": lmm, "model": next(p["model"] for g in plan["gpus"] for p in g["placements"]
                                                          if p["role"] == "lmm"), "shares_gpu_with_render": bool(shared)},
            "ray_gpus": ray_gpus, "cuda_visible_devices": visible,
            "operators": [{"stages": list(op.stages), "num_cpus": op.num_cpus, "num_gpus": op.num_gpus,
                           "actors": op.actors} for op in ops]}


def format_layout(lay: dict) -> str:
    srv = lay["lmm_server"]
    lines = [f"executor: ray on {lay['nodes']} node(s) × {lay['gpus_per_node']} GPU(s) of {lay['gpu_gb']:g} GB",
             f"per node: LMM server ({srv['model']}) on {', '.join(srv['devices'])}, outside Ray "
             f"(kbridge lmm serve / vllm serve; pass its URL with --lmm)"
             + (", sharing its GPU with the render actor" if srv["shares_gpu_with_render"] else ""),
             f"per node: start Ray with CUDA_VISIBLE_DEVICES={lay['cuda_visible_devices']} "
             f"(Ray sees {', '.join(lay['ray_gpus'])})"]
    for op in lay["operators"]:
        gpu = f"{op['num_gpus']:g} GPU" if op["num_gpus"] else "no GPU"
        lines.append(f"operator {' + '.join(op['stages']):<26} up to {op['actors']:>2} actor(s), "
                     f"{op['num_cpus']:g} CPU, {gpu} each")
    return "\n".join(lines)
