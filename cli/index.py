"""``kbridge index …``: the faiss index of a dataset's complete samples, saved with a run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kbridge.cli.common import ProfileOpt

index_app = typer.Typer(no_args_is_help=True,
                        help="Corpus index for retrieved candidates (faiss; MIRe late interaction with --retriever).")


@index_app.command("build")
def build(
    profile: str = ProfileOpt,
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
    doc_maxlen: Optional[int] = typer.Option(None, "--doc-maxlen", help="MIRe document length (default: the "
                                             "model's; a converted MIRe model: 384, as MIRe indexes)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Embed every complete sample (image, text, knowledge graph) and save the index with the run;
    a later `kbridge run --out` into the same directory adds retrieved candidates."""
    from kbridge.cli.common import fail, load_config, out, setup_logging
    from kbridge.engine.api import Engine
    from kbridge.engine.config import ConfigError
    from kbridge.engine.data import DataError
    from kbridge.engine.retrieve.index import IndexUnavailable
    from kbridge.engine.zoo import ModelNotFound

    setup_logging(verbose)
    cfg = load_config(profile, config, rank=dict(index_kind=kind, retriever=retriever))
    try:
        summary = Engine(cfg).build_index(data=data, fmt=fmt, missing=missing, out=out_dir, limit=limit,
                                         metadata=metadata)
    except (DataError, ModelNotFound, ConfigError, IndexUnavailable, ValueError) as e:
        fail(str(e))
    out.print(f"indexed {summary['items']} complete samples ({summary['kind']}, {summary['dim']}-d semantic + "
              f"graph) → {summary['path']}")
    for e in summary["errors"]:
        out.print(f"skipped {e['sample_id']}: {e['error']}")
    if retriever != "faiss":
        from kbridge.engine.errors import KbridgeError
        from kbridge.engine.retrieve.mire.retriever import build_mire_index

        try:
            from kbridge.engine.retrieve.mire.checkpoint import with_settings
            from kbridge.engine.retrieve.mire.retriever import load_encoder

            m = build_mire_index(cfg, Path(summary["path"]), with_settings(load_encoder(cfg), doc_maxlen=doc_maxlen))
        except KbridgeError as e:
            fail(str(e))
        out.print(f"MIRe index: {m['documents']} texts, {m['tokens']} tokens in {m['cells']} cells → {m['path']}")


def _mire_retriever(profile, config, out_dir, query_maxlen, attend_mask, pad_leak):
    from kbridge.cli.common import load_config
    from kbridge.engine.retrieve.mire.checkpoint import with_settings
    from kbridge.engine.retrieve.mire.retriever import MireRetriever

    cfg = load_config(profile, config)
    r = MireRetriever.load(cfg, Path(out_dir) / "index")
    with_settings(r.encoder, query_maxlen=query_maxlen, attend_to_mask_tokens=attend_mask, pad_leak=pad_leak)
    return r


QueryMaxlen = typer.Option(None, "--query-maxlen", help="MIRe query length (default: the model's; converted: 64).")
AttendMask = typer.Option(None, "--attend-mask/--no-attend-mask",
                          help="Attend to the query's [MASK] padding (training) or not (MIRe's search).")
PadLeak = typer.Option(None, "--pad-leak/--no-pad-leak", help="Reproduce MIRe's leak of padded rows into the pooling.")


@index_app.command("query")
def query(
    text: str = typer.Option(..., "--text", help="The question or query text (e.g. an OK-VQA question)."),
    image: Optional[Path] = typer.Option(None, "--image", help="The query's image (MIRe's queries are image + text)."),
    out_dir: Path = typer.Option(Path("kbridge-out"), "--out", help="Run directory with <out>/index/mire."),
    k: int = typer.Option(5, "--k", help="How many corpus texts to return."),
    profile: str = typer.Option("tiny", "--profile", "-p"), config: Optional[Path] = typer.Option(None, "--config"),
    query_maxlen: Optional[int] = QueryMaxlen, attend_mask: Optional[bool] = AttendMask,
    pad_leak: Optional[bool] = PadLeak,
    as_json: bool = typer.Option(False, "--json"),
):
    """MIRe: retrieve corpus texts for your own question (and image) from the late-interaction index."""
    import json

    from PIL import Image

    from kbridge.cli.common import fail, out
    from kbridge.engine.errors import KbridgeError

    try:
        r = _mire_retriever(profile, config, out_dir, query_maxlen, attend_mask, pad_leak)
        hits = r.query([text], [Image.open(image)] if image else None, k)[0]
    except (KbridgeError, OSError) as e:
        fail(str(e))
    if as_json:
        print(json.dumps(hits, indent=1))
        return
    for i, h in enumerate(hits, 1):
        out.print(f"{i}. {h['maxsim']:.4f} {h['sample_id']}: {h['text']}", markup=False)


@index_app.command("eval")
def eval_retrieval(
    queries: Path = typer.Option(..., "--queries", help='JSONL: {"id", "text", "image"?, "relevant": [corpus ids]}.'),
    out_dir: Path = typer.Option(Path("kbridge-out"), "--out", help="Run directory with <out>/index/mire."),
    profile: str = typer.Option("tiny", "--profile", "-p"), config: Optional[Path] = typer.Option(None, "--config"),
    query_maxlen: Optional[int] = QueryMaxlen, attend_mask: Optional[bool] = AttendMask,
    pad_leak: Optional[bool] = PadLeak,
    as_json: bool = typer.Option(False, "--json"),
):
    """MIRe retrieval against relevance labels: R@1/5/10/20/50/100, P@1, P@5, MRR@5 (as MIRe reports)."""
    import json

    from kbridge.cli.common import fail, out
    from kbridge.engine.errors import KbridgeError
    from kbridge.engine.retrieve.mire.evaluate import evaluate, read_queries

    try:
        r = _mire_retriever(profile, config, out_dir, query_maxlen, attend_mask, pad_leak)
        m = evaluate(r, read_queries(queries))
    except KbridgeError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(m, indent=1))
        return
    out.print(f"{m['queries']} queries: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in m.items() if k != "queries"),
              markup=False)
