"""What every ``kbridge`` command shares: the consoles, one-line errors and log records, the
configuration from ``--profile`` / ``--config`` and section flags, and the shared options.

The sub-apps import this module, never ``app.py`` (which imports them to register their commands).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True, soft_wrap=True)  # one error, one line, whatever the width


def line(level: str, message: str) -> None:
    """One line on stderr; the message is printed literally (no markup from data)."""
    from rich.text import Text

    style = "bold red" if level == "error" else "yellow" if level == "warning" else "dim"
    err.print(Text.assemble((level, style), ": ", message), highlight=False)


class _OneLine(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warning" \
            if record.levelno >= logging.WARNING else "debug"
        line(level, record.getMessage())


def setup_logging(verbose: bool) -> None:
    root = logging.getLogger("kbridge")
    root.handlers[:] = [_OneLine()]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.propagate = False


def fail(message: str, code: int = 2) -> None:
    line("error", message)
    raise typer.Exit(code)


def load_config(profile: str, config: Optional[Path], **sections):
    """The profile with the TOML file and the flags given (``None`` flags are left out) over it; a
    configuration error is one error line."""
    from kbridge.engine.config import ConfigError, build_config

    overrides = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in sections.items()}
    try:
        return build_config(profile, config, overrides)
    except ConfigError as e:
        fail(str(e))


ProfileOpt = typer.Option("tiny", "--profile", "-p", help="tiny (CPU default), h100, 4090x4, edge.")
ConfigOpt = typer.Option(None, "--config",
                         help="TOML file overriding profile sections: models, lmm, knowledge, generation, rank, run.")
