"""``kbridge index …``: the faiss index of a dataset's complete samples, saved with a run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

index_app = typer.Typer(no_args_is_help=True,
                        help="Corpus index for retrieved candidates (faiss; MIRe late interaction with --retriever).")


@index_app.command("build")
def build(
    profile: str = typer.Option("tiny", "--profile", "-p", help="tiny (CPU default), h100, 4090x4, edge."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file overriding profile sections."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory (default: bundled demo set)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="coco | mmimdb | iuxray (detected when unambiguous)."),
    missing: Optional[Path] = typer.Option(None, "--missing", help="Missing config: its complete samples are indexed."),
    out_dir: Path = typer.Option(Path("kbridge-out"), "--out", help="Run directory; the index goes to <out>/index."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N complete samples."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="Metadata file of the dataset (default: "
                                            "metadata.json, train.json or data.json in --data)."),
    kind: Optional[str] = typer.Option(None, "--kind", help="auto (default) | flat | ivfpq."),
    retriever: str = typer.Option("faiss", "--retriever",
                                  help="faiss | mire | both: mire / both add the MIRe late-interaction index "
                                       "(<index>/mire) over the corpus texts; set [rank] retriever to use it."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Embed every complete sample (image, text, knowledge graph) and save the index with the run;
    a later `kbridge run --out` into the same directory adds retrieved candidates."""
    from kbridge.cli.app import _config, _fail, _setup_logging, out
    from kbridge.engine.api import Engine
    from kbridge.engine.config import ConfigError
    from kbridge.engine.data import DataError
    from kbridge.engine.rank.index import IndexUnavailable
    from kbridge.engine.zoo import ModelNotFound

    _setup_logging(verbose)
    cfg = _config(profile, config, rank=dict(index_kind=kind, retriever=retriever))
    try:
        summary = Engine(cfg).build_index(data=data, fmt=fmt, missing=missing, out=out_dir, limit=limit,
                                         metadata=metadata)
    except (DataError, ModelNotFound, ConfigError, IndexUnavailable, ValueError) as e:
        _fail(str(e))
    out.print(f"indexed {summary['items']} complete samples ({summary['kind']}, {summary['dim']}-d semantic + "
              f"graph) → {summary['path']}")
    for e in summary["errors"]:
        out.print(f"skipped {e['sample_id']}: {e['error']}")
    if retriever != "faiss":
        from kbridge.engine.errors import KbridgeError
        from kbridge.engine.mire.retriever import build_mire_index

        try:
            m = build_mire_index(cfg, Path(summary["path"]))
        except KbridgeError as e:
            _fail(str(e))
        out.print(f"MIRe index: {m['documents']} texts, {m['tokens']} tokens in {m['cells']} cells → {m['path']}")
