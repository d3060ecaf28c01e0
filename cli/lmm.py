"""``kbridge lmm …``: serve the LMM with vLLM for ``kbridge run --lmm URL``."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

lmm_app = typer.Typer(no_args_is_help=True, help="Serve the LMM (vLLM, OpenAI-compatible) for kbridge run --lmm.")
out = Console()
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    from rich.text import Text

    err.print(Text.assemble(("error", "bold red"), ": ", message), highlight=False)
    raise typer.Exit(code)


@lmm_app.command("serve")
def serve(
    profile: str = typer.Option(..., "--profile", "-p", help="4090x4 | 4090x4-72b | h100 | edge"),
    model: Optional[str] = typer.Option(None, "--model", help="Local checkpoint directory (the profile's model)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: Optional[int] = typer.Option(None, "--port", help="Default: the profile's (8000)."),
    api_key_env: str = typer.Option("KBRIDGE_LMM_API_KEY", "--api-key-env",
                                    help="Environment variable with the API key the server will require."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the vllm serve command and exit."),
    wait_s: float = typer.Option(1800.0, "--wait", help="Seconds to wait for the server to become healthy."),
    vllm_bin: str = typer.Option("vllm", "--vllm-bin", help="The vllm executable."),
):
    """Start `vllm serve` with the profile's serving plan, wait until healthy, print the base URL."""
    from kbridge.engine.lmm.serving import SERVE_PROFILES, ServeError, serve_command, shell_line, wait_healthy

    if profile not in SERVE_PROFILES:
        _fail(f"unknown serving profile {profile!r} (known: {', '.join(SERVE_PROFILES)})")
    p = SERVE_PROFILES[profile]
    if model is None and not dry_run:
        _fail(f"give --model DIR: a local directory of {p.model} (nothing is downloaded)")
    path = model or f"/models/{p.model}"
    if not dry_run and not Path(path).is_dir():
        _fail(f"model directory not found: {path}")
    from kbridge.engine.lmm.serving import tp_split_error

    why = tp_split_error(path, p.tensor_parallel) if not dry_run else None
    if why:
        _fail(why)
    argv, env = serve_command(p, path, host, port, api_key_env, vllm_bin)
    base = f"http://{host}:{port or p.port}"
    if dry_run:
        out.print(shell_line(argv, env, api_key_env), highlight=False, soft_wrap=True)
        out.print(f"# {p.execution} execution; then: kbridge run --lmm {base}/v1 ...", highlight=False)
        return
    try:
        proc = subprocess.Popen(argv, env={**os.environ, **env})
    except OSError as e:
        _fail(f"cannot start {vllm_bin}: {e} (pip install 'kbridge[vllm]')")
    try:
        wait_healthy(base, proc, wait_s)
    except ServeError as e:
        proc.send_signal(signal.SIGINT)
        _fail(str(e))
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        raise typer.Exit(130)
    out.print(f"LMM server healthy: {base}/v1   (kbridge run --lmm {base}/v1)", highlight=False)
    try:
        raise typer.Exit(proc.wait())
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        raise typer.Exit(proc.wait())
