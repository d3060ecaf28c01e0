"""The documented ``kbridge`` examples of one section of a page (``docs/*.md`` or the README), as
written, for tests that run each of them."""
from __future__ import annotations

import shlex
from tests.helpers import ROOT




def commands(heading: str, page: str) -> list[str]:
    """Every ``kbridge …`` command in the code blocks of the section ``heading`` (e.g. ``"# Recover
    (DiCMoR)"``) of ``page`` (a Markdown file relative to the repository root, e.g.
    ``"docs/recover.md"``) up to the next heading of the same or a higher level; ``\\``
    continuations joined, the ``kbridge`` word kept. Headings inside code blocks (``# comment``
    lines) do not end it."""
    level = len(heading.split()[0])
    lines = (ROOT / page).read_text().splitlines()
    start = lines.index(heading)
    out, code, cur = [], False, ""
    for line in lines[start + 1:]:
        if line.startswith("```"):
            code = not code
            continue
        if not code:
            hashes = len(line) - len(line.lstrip("#"))
            if 0 < hashes <= level and line[hashes:hashes + 1] == " ":
                break
            continue
        cur += line.rstrip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        if cur.lstrip().startswith("kbridge "):
            out.append(" ".join(cur.split()))
        cur = ""
    return out


def argv(command: str) -> list[str]:
    """The arguments after ``kbridge`` (shell comments dropped)."""
    words = shlex.split(command, comments=True)
    assert words[0] == "kbridge", command
    return words[1:]


def invoke(command: str):
    from typer.testing import CliRunner

    from kbridge.cli.app import app

    return CliRunner().invoke(app, argv(command))


def run_example(command: str, workspace, monkeypatch):
    """Run one documented command as written, in its prepared directory; it must exit 0."""
    monkeypatch.chdir(workspace)
    r = invoke(command)
    assert r.exit_code == 0, f"{command}\n{r.output}"
    return r
