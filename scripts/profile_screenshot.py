"""Regenerate docs/profile.png and docs/profile.txt, docs/report.md's profiling pictures: a traced run
(`small` profile by default) on the demo set, `kbridge profile` of it, and a screenshot of the
report's profile section (verdict, tables, the busiest window's timeline) in headless Chromium
(Debian's chromium + chromium-driver). The README's profiling section quotes the run's verdict
between its ``profile:begin`` / ``profile:end`` markers; this script rewrites that block too.

    .venv/bin/python scripts/profile_screenshot.py [--profile small] [OUT.png]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(profile: str, out: Path) -> None:
    import sys

    from kbridge.engine.api import Engine
    from kbridge.engine.config import build_config
    from kbridge.engine.report import build_report
    from kbridge.engine.report.browser import chromium, missing_reason
    from kbridge.engine.trace import TraceOptions
    from kbridge.engine.trace.profile import profile as build_profile

    if (why := missing_reason()) is not None:
        sys.exit(f"error: {why}")
    run = Path(tempfile.mkdtemp(prefix="kbridge-profile-shot-")) / "run"
    Engine(build_config(profile)).run(out=run, trace=TraceOptions(run / "trace.json.gz"))
    p = build_profile(run)
    text = out.with_suffix(".txt")
    text.write_text("\n".join(p["verdict"]) + "\n\n" + json.dumps({k: p[k] for k in ("devices", "stages", "kinds")},
                                                                 indent=1) + "\n")
    readme = ROOT / "README.md"
    readme.write_text(with_verdict(readme.read_text(), p["verdict"], profile))
    page = build_report(run, run / "report.html")
    with chromium() as driver:
        driver.get(page.resolve().as_uri() + "#profile")
        section = driver.find_element("css selector", "#profile")
        out.parent.mkdir(parents=True, exist_ok=True)
        section.screenshot(str(out))
    print(f"wrote {out} and {text} (trace: {run / 'trace.json.gz'})")


BEGIN, END = "<!-- profile:begin -->", "<!-- profile:end -->"


def with_verdict(readme: str, verdict: list[str], profile: str) -> str:
    """``readme`` with the block between the markers replaced by the run's verdict."""
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    block = f"\n```\n$ kbridge profile RUN_DIR   # the {profile} profile's run in the picture\n" + "\n".join(verdict) + "\n```\n"
    return head + BEGIN + block + END + tail


def readme_verdict(readme: str) -> list[str]:
    """The verdict lines quoted in the README's block."""
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    return [ln for ln in block.strip().strip("`").strip().splitlines()[1:] if ln and not ln.startswith("```")]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="small")
    ap.add_argument("out", nargs="?", type=Path, default=ROOT / "docs" / "profile.png")
    a = ap.parse_args()
    main(a.profile, a.out)
