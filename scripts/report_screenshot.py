"""Regenerate docs/report.png, the picture of `kbridge report` (docs/report.md): the demo run on the tiny
default, its report, a screenshot in headless Chromium (Debian's chromium + chromium-driver).

    .venv/bin/python scripts/report_screenshot.py [OUT.png]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main(out: Path) -> None:
    from kbridge.engine.api import Engine
    from kbridge.engine.config import build_config
    from kbridge.engine.report import build_report
    from kbridge.engine.report.browser import chromium, missing_reason

    if (why := missing_reason()) is not None:
        sys.exit(f"error: {why}")
    tmp = Path(tempfile.mkdtemp(prefix="kbridge-shot-"))
    Engine(build_config("tiny")).run(out=tmp / "run")
    page = build_report(tmp / "run", tmp / "run" / "report.html")
    with chromium() as driver:
        driver.get(page.resolve().as_uri())
        driver.execute_script("return document.readyState")
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "report.png")
