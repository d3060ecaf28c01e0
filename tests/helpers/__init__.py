"""Helpers shared by several test folders, imported as ``tests.helpers.<module>``: the fake LMM,
the loopback OpenAI-compatible server, the determinism promise, publisher-format checkpoints,
the README's example commands, JSON-lines files."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository's root (README.md, scripts/, the source folders)."""
