"""The documentation: the README stays a landing page whose links resolve, and the generated CLI
reference (docs/cli.md) is what the Typer app gives. The site itself is built strictly in CI
(`mkdocs build --strict` in .ci/run: broken links, missing anchors and pages left out of the nav
fail it)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    from kbridge.cli.reference import COMMAND, PAGE, render

    assert PAGE == ROOT / "docs" / "cli.md"
    assert PAGE.read_text() == render(), f"docs/cli.md is stale: run `{COMMAND}` and commit it"


def test_cli_reference_has_every_command():
    import typer

    from kbridge.cli.app import app

    text = (ROOT / "docs" / "cli.md").read_text()

    def walk(cmd, prefix):
        yield prefix
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{prefix} {name}")

    names = list(walk(typer.main.get_command(app), "kbridge"))
    assert len(names) > 30 and "kbridge bench e2e" in names and "kbridge models convert-mire" in names
    missing = [n for n in names[1:] if f"# `{n}`" not in text]
    assert not missing, missing


def test_readme_is_a_landing_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) > 20
    broken = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not broken, broken
