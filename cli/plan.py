"""``kbridge plan``: the GPU memory plan (placements, memory, schedule) with its arithmetic; with
``--executor ray`` the Ray actor layout, with ``--estimate`` throughput and latency on paper."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def plan(
    profile: str = typer.Option("4090x4", "--profile", "-p", help="h100, 4090x4, 4090x4-72b, edge (or tiny/small)."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU list, e.g. 4x24GB, 1x80GB, 1x80GB,2x24GB "
                                       "(default: the GPUs present, else the profile's)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file overriding profile sections."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    executor: str = typer.Option("local", "--executor", help="local (the memory plan) | ray (the Ray actor layout)."),
    nodes: int = typer.Option(1, "--nodes", min=1, help="Ray nodes (with --executor ray)."),
    gpus_per_node: Optional[str] = typer.Option(None, "--gpus-per-node", help="GPUs of each Ray node, e.g. 8x80GB "
                                                "(default: --gpus, else the profile's)."),
    estimate: bool = typer.Option(False, "--estimate", help="Samples/s and latency on paper (estimates, not "
                                  "measurements) for 1×4090, 4×4090, 1×H100, 2×8×H100."),
):
    """Which models go on which GPU, their memory and headroom, and the schedule (fused / phased)."""
    from kbridge.cli.common import fail, load_config, out
    from kbridge.engine.config import ConfigError
    from kbridge.engine.plan import PlanError, default_gpus, format_plan, make_plan, parse_gpus, visible_gpus

    cfg = load_config(profile, config)
    if estimate:
        from kbridge.engine.estimate import BOXES, estimate as est, format_estimate

        lmm = "72B-int8" if "72b" in cfg.profile else "7B"
        table = [(box, est(g, n, m, lmm)) for box, g, n, m in BOXES]
        if as_json:
            out.print_json(json.dumps({box: rows for box, rows in table}))
        else:
            out.print(format_estimate(table), highlight=False, markup=False, soft_wrap=True)
        return
    try:
        if executor == "ray":
            from kbridge.engine.executors.ray_plan import format_layout, ray_layout

            spec = gpus_per_node or gpus
            lay = ray_layout(cfg, nodes, parse_gpus(spec) if spec else default_gpus(cfg))
            if as_json:
                out.print_json(json.dumps(lay))
            else:
                out.print(format_layout(lay), highlight=False, markup=False, soft_wrap=True)
            return
        if executor != "local":
            raise ConfigError(f"--executor: {executor!r} is not local or ray")
        present = visible_gpus()
        devices = parse_gpus(gpus) if gpus else (present or default_gpus(cfg))
        p = make_plan(cfg, devices)
    except (ConfigError, PlanError) as e:
        fail(str(e))
    if as_json:
        out.print_json(json.dumps(p))
    else:
        out.print(format_plan(p), highlight=False, markup=False)
