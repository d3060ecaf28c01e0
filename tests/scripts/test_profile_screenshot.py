"""The README's profiling section quotes the verdict of the run whose picture it shows."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("profile_screenshot", ROOT / "scripts" / "profile_screenshot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_quotes_the_pictured_runs_verdict():
    verdict = (ROOT / "docs" / "profile.txt").read_text().split("\n\n")[0].splitlines()
    assert verdict and verdict[0].startswith("bottleneck:")
    assert _script().readme_verdict((ROOT / "README.md").read_text()) == verdict


def test_the_block_is_rewritten_in_place():
    m = _script()
    text = f"a\n{m.BEGIN}old{m.END}\nb\n"
    out = m.with_verdict(text, ["bottleneck: x", "knob: y"], "small")
    assert out.startswith("a\n") and out.endswith("\nb\n") and "old" not in out
    assert m.readme_verdict(out) == ["bottleneck: x", "knob: y"]
    assert m.with_verdict(out, ["bottleneck: x", "knob: y"], "small") == out
