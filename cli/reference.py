"""The CLI reference page (``docs/cli.md``), written from the Typer app by Typer's own Markdown
writer (the one behind ``typer … utils docs``), never by hand.

``python -m kbridge.cli.reference`` rewrites the page; with ``--check`` it only says whether the
page is current (exit 1 when it is not).
"""
from __future__ import annotations

import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
COMMAND = "python -m kbridge.cli.reference"
HEADER = f"<!-- Generated from the Typer app by `{COMMAND}`; do not edit by hand. -->\n\n"
_MARKUP = str.maketrans({"<": "&lt;", ">": "&gt;", "*": r"\*", "_": r"\_"})


def _text(s: str) -> str:
    """A help text as plain text: Markdown must not read ``<split>`` as HTML or ``_missing_`` as
    emphasis; spans in backticks stay code."""
    parts = s.split("`")
    return "`".join(p if i % 2 else p.translate(_MARKUP) for i, p in enumerate(parts))


def _plain(markdown: str) -> str:
    """Typer's page with every help text (command paragraphs, option and command lists) made plain;
    headings, the bold labels and the usage blocks are Typer's own Markdown."""
    out, code = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            code = not code
        elif not code and not line.startswith(("#", "**")):
            if line.startswith("* `"):
                name, sep, help_text = line.partition("`: ")
                line = name + sep + _text(help_text)
            else:
                line = _text(line)
        out.append(line)
    return "\n".join(out)


def render() -> str:
    """The page's Markdown: every command and sub-command with its usage, arguments and options.
    Help texts go in as plain text (no rich markup is converted), so the page depends only on the
    app and Typer's writer, not on the terminal."""
    import typer
    from typer.cli import get_docs_for_click

    from kbridge.cli.app import app

    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="kbridge")
    body = get_docs_for_click(obj=command, ctx=ctx, name="kbridge", title="CLI reference")
    return HEADER + _plain(body.strip()) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--check"]:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if argv:
        print(f"usage: {COMMAND} [--check]", file=sys.stderr)
        return 2
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
