"""``kbridge plan``: the GPU memory plan (placements, memory, schedule) with its arithmetic."""
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
):
    """Which models go on which GPU, their memory and headroom, and the schedule (fused / phased)."""
    from kbridge.cli.app import _config, _fail, out
    from kbridge.engine.config import ConfigError
    from kbridge.engine.plan import PlanError, default_gpus, format_plan, make_plan, parse_gpus, visible_gpus

    cfg = _config(profile, config)
    try:
        present = visible_gpus()
        devices = parse_gpus(gpus) if gpus else (present or default_gpus(cfg))
        p = make_plan(cfg, devices)
    except (ConfigError, PlanError) as e:
        _fail(str(e))
    if as_json:
        out.print_json(json.dumps(p))
    else:
        out.print(format_plan(p), highlight=False, markup=False)
