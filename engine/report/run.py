"""Reading a run directory for the report: results, errors, manifest, and each sample's available
modality from the dataset (through ``engine.data``'s loaders, read-only).

Everything newer runs add (per-stage ``timings``, ``refined`` / ``retriever`` on candidates) is
optional here: older runs simply lack those parts of the page.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kbridge.engine.errors import KbridgeError
from kbridge.engine.store import read_results


class ReportError(KbridgeError):
    """The run directory cannot be reported (missing or malformed results / manifest)."""


@dataclass
class Run:
    root: Path
    results: list[dict]
    """One dict per completed sample, in file order (a resumed sample's last line wins)."""
    errors: list[dict]
    manifest: dict
    dataset: object | None = None
    """The ``engine.data.Dataset`` named by the manifest, or None when it cannot be opened."""
    notes: list[str] = field(default_factory=list)
    """Problems that do not stop the report (dataset moved, torn lines), shown at the top."""


def _jsonl(path: Path, notes: list[str]) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            notes.append(f"{path.name}:{n}: not valid JSON, skipped")
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            notes.append(f"{path.name}:{n}: not a JSON object, skipped")
    return rows


def load_run(root: str | Path) -> Run:
    """Read ``root``; raises ReportError when it is not a run directory."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"run directory {root} does not exist")
    results_path = root / "results.jsonl"
    if not results_path.exists() and not (root / "errors.jsonl").exists():
        raise ReportError(f"{root}: not a run directory (no results.jsonl or errors.jsonl)")
    notes: list[str] = []
    manifest: dict = {}
    if (root / "manifest.json").exists():
        try:
            manifest = json.loads((root / "manifest.json").read_text())
        except ValueError as e:
            raise ReportError(f"{root / 'manifest.json'}: not valid JSON ({e})") from e
    else:
        notes.append("no manifest.json: configuration and totals unknown")
    by_id = {r["sample_id"]: r for r in read_results(root, bad=lambda n, why: notes.append(
        f"results.jsonl:{n}: {why}, skipped"))}
    run = Run(root, list(by_id.values()), _jsonl(root / "errors.jsonl", notes), manifest, notes=notes)
    run.dataset = _open_dataset(manifest.get("data") or {}, notes)
    return run


def _open_dataset(data: dict, notes: list[str]):
    from kbridge.engine.data import DataError, open_dataset

    if not data.get("root"):
        return None
    try:
        # the missing config is not needed: each result says what was missing
        return open_dataset(data["root"], data.get("format"), None, name=data.get("name"))
    except (DataError, OSError) as e:
        notes.append(f"dataset not readable, available modalities not shown: {e}")
        return None


def available(run: Run, row: dict) -> dict:
    """The sample's available modality: ``{"image": Path}`` (text-missing samples),
    ``{"text": str}`` (image-missing), or ``{"unavailable": reason}``."""
    from kbridge.engine import data as D

    ds = run.dataset
    index, missing = row.get("index"), row.get("missing")
    if ds is None:
        return {"unavailable": "dataset not readable"}
    if not isinstance(index, int) or not 0 <= index < len(ds.items) or not isinstance(ds.items[index], dict):
        return {"unavailable": f"index {index!r} not in the dataset"}
    rec = ds.items[index]
    if missing == "image":
        return {"text": D.text_of(rec, ds.format)}
    if missing == "text" and rec.get("file_name"):
        path = D.image_path(ds, rec["file_name"])
        return {"image": path} if path.exists() else {"unavailable": f"image file not found: {path}"}
    return {"unavailable": f"nothing recorded for missing={missing!r}"}
