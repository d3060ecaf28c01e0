"""Where a sample's generated tokens go, counted (no timing: it can run on a loaded machine):

    python scripts/token_breakdown.py [--profile tiny] [--samples 2] [--json FILE]

runs the e2e benchmark's sample set (alternating image- / text-missing) through ``kbridge run``
with the hf backend and no response cache, and prints per missing modality the generated tokens
per sample as ``bench e2e`` counts them, split by stage and by what each token carries (content,
object keys, other grammar-forced framing, the end token; benchmarks/tokens.py says how each is
told apart), then the content tokens by field.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--json", help="also write the report as JSON here")
    a = ap.parse_args(argv)
    from kbridge.benchmarks.tokens import measure, table
    from kbridge.engine.config import build_config

    with tempfile.TemporaryDirectory() as tmp:
        report = measure(build_config(a.profile), a.samples, tmp)
    print(f"profile {a.profile}, {a.samples} samples: generated tokens per sample")
    print(table(report))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
