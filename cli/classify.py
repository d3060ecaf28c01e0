"""``kbridge classify`` (eval, train, params) and ``kbridge models convert-dcp|convert-rep``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

classify_app = typer.Typer(no_args_is_help=True,
                           help="Missing-aware downstream classifiers (DCP, REP) on a frozen CLIP ViT-B/16.")

ModelOpt = typer.Option("tiny", "--model", help="Classifier directory (from convert-dcp/-rep or train), or tiny.")
KindOpt = typer.Option("dcp", "--kind", help="With --model tiny: dcp | rep.")
TaskOpt = typer.Option(None, "--task", help="mmimdb | food101 | hatememes (default: the model's head).")
DataOpt = typer.Option(..., "--data", help="Dataset: reference JSON layout directory, or the reference's .arrow file(s).")
MissingOpt = typer.Option(None, "--missing", help="Missing config (reference JSON) or missing table (.pt).")
DeviceOpt = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N.")


def _model_dir(model: str, kind: str, task: Optional[str]) -> Path:
    from kbridge.engine.peers.classify.model import resolve

    return resolve(model, kind, task or "mmimdb")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


@classify_app.command("eval")
def eval_cmd(
    model: str = ModelOpt, data: Path = DataOpt,
    missing: Optional[list[Path]] = typer.Option(
        None, "--missing", help="Missing config (reference JSON) or missing table (.pt); repeat it with the "
                                "reference's text / image / both tables to get the papers' row."),
    completed: Optional[Path] = typer.Option(None, "--completed",
                                             help="A kbridge run directory (results.jsonl) or an --export-completed directory."),
    task: Optional[str] = TaskOpt, kind: str = KindOpt,
    backend: str = typer.Option("torch", "--backend", help="torch | onnx (exported once, cached)."),
    batch_size: int = typer.Option(32, "--batch-size"), device: str = DeviceOpt,
    workers: int = typer.Option(0, "--workers", help="Data-loader processes decoding images while the model runs."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the JSON report here."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the table."),
):
    """Score a dataset: task metric per missing-type group, as given and (with --completed) filled."""
    from rich.table import Table

    from kbridge.cli.common import fail, out
    from kbridge.engine.errors import KbridgeError
    from kbridge.engine.peers.classify.evaluate import GROUPS, evaluate, paper_row

    try:
        d = _model_dir(model, kind, task)
        reps = [evaluate(d, data, m, completed, task=task, backend=backend, batch_size=batch_size, device=device,
                         workers=workers)
                for m in (missing or [None])]
    except KbridgeError as e:
        fail(str(e))
    js = reps[0].to_json() if len(reps) == 1 else [dict(r.to_json(), missing=str(m)) for r, m in zip(reps, missing)]
    if report:
        report.write_text(json.dumps(js, indent=1) + "\n")
    if as_json:
        print(json.dumps(js, indent=1))
        return
    for r, m in zip(reps, missing or [None]):
        if r.nothing_scorable:   # one line, never a table of 0.00 / n/a
            out.print(f"{r.nothing_scorable}{' (' + Path(m).name + ')' if m else ''}", markup=False)
            if r.unmapped_labels:
                out.print("unmapped labels (not among the head's classes): "
                          + ", ".join(f"{k} ×{v}" for k, v in sorted(r.unmapped_labels.items())), markup=False)
            continue
        t = Table(title=f"kbridge classify eval ({r.task}, {r.backend}{', ' + Path(m).name if m else ''}) — "
                        f"{r.primary} ×100", title_justify="left")
        t.add_column("condition")
        for g in GROUPS:
            t.add_column(g, justify="right")
        for cond, groups in r.results.items():
            t.add_row(cond, *(f"{_fmt(groups[g][r.primary])} (n={groups[g]['n']})" for g in GROUPS))
        out.print(t)
        for note in r.notes:
            out.print(f"note: {note}")
        if r.unmapped_labels:
            out.print("unmapped labels (not among the head's classes): "
                      + ", ".join(f"{k} ×{v}" for k, v in sorted(r.unmapped_labels.items())))
        if r.unscored:
            out.print(f"unscored samples (no mapped label{'' if r.task == 'mmimdb' else ', or several'}): {r.unscored}")
    if missing and len(missing) > 1:
        out.print(paper_row(reps, missing), markup=False)


@classify_app.command("train")
def train_cmd(
    data: Path = DataOpt, missing: Optional[Path] = MissingOpt,
    out_dir: Path = typer.Option(..., "--out", help="Directory for the trained classifier (and, while training, "
                                                    "its resumable state train-state.pt)."),
    model: str = ModelOpt, kind: str = KindOpt, task: Optional[str] = TaskOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over the data, each in its own seeded order "
                                                                "(default 10 unless --steps is given)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Batches in all (with --epochs: at most this many)."),
    lr: float = typer.Option(1e-3, "--lr"),
    batch_size: int = typer.Option(16, "--batch-size"), seed: int = typer.Option(0, "--seed"),
    warmup: float = typer.Option(0.1, "--warmup", help="Fraction of the steps with a linear warm-up; then cosine decay."),
    workers: int = typer.Option(0, "--workers", help="Data-loader processes decoding images beside the training."),
    val_data: Optional[Path] = typer.Option(None, "--val-data", help="Validation set: keep the weights of the best "
                                                                   "validation metric (as the papers' checkpoints)."),
    val_missing: Optional[Path] = typer.Option(None, "--val-missing", help="Missing config / table of --val-data."),
    val_every: int = typer.Option(0, "--val-every", help="Also validate every N steps (always at each epoch's end)."),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Also save the resumable state every N steps "
                                                                       "(always at each epoch's end)."),
    device: str = DeviceOpt,
):
    """Fit the prompts (and head) on a frozen backbone; the head takes the data's classes. A killed
    run resumes from OUT/train-state.pt when started again with the same settings."""
    from kbridge.cli.common import fail, out
    from kbridge.engine.errors import KbridgeError
    from kbridge.engine.peers.classify import model as M
    from kbridge.engine.peers.classify.data import read_dataset
    from kbridge.engine.peers.classify.train import train, with_classes

    state = out_dir / "train-state.pt"
    try:
        d = _model_dir(model, kind, task)
        m = M.load(d)
        tok = M.load_tokenizer(d)
        names = _data_classes(data) or m.cfg.class_names
        m = with_classes(m, names, seed)
        ds = read_dataset(data, m.cfg.task, missing, m.cfg.class_names)
        val = read_dataset(val_data, m.cfg.task, val_missing, m.cfg.class_names).examples if val_data else None
        out_dir.mkdir(parents=True, exist_ok=True)
        res = train(m, ds.examples, tok, steps=steps, epochs=10 if epochs is None and steps is None else epochs,
                    lr=lr, batch_size=batch_size, seed=seed, device=device, warmup=warmup, workers=workers,
                    val_examples=val, val_every=val_every, state_path=state, checkpoint_every=checkpoint_every)
        M.save(m.cpu(), out_dir, d)
        state.unlink(missing_ok=True)
    except (KbridgeError, OSError) as e:
        fail(str(e))
    if res["resumed_from"]:
        out.print(f"resumed from step {res['resumed_from']} ({state})", markup=False)
    out.print(f"trained {res['trainable_parameters']:,} parameters for {res['steps']} steps ({res['epochs']:.3g} "
              f"epochs) on {res['samples']} samples: loss {res['loss_first']:.4f} → {res['loss_last']:.4f}; "
              f"wrote {out_dir}", markup=False)
    if res["best_step"] is not None:
        out.print(f"kept the weights of step {res['best_step']} (best validation {res['best_metric']})")


def _data_classes(data: Path) -> Optional[tuple]:
    cat = Path(data) / "category.json"
    if cat.exists():
        names = json.loads(cat.read_text()).get("label_name")
        return tuple(names) if names else None
    return None


@classify_app.command("missing-tables")
def missing_tables_cmd(
    data: Path = typer.Option(..., "--data", help="Directory of the reference's <task>_{train,dev|val,test}.arrow."),
    task: str = typer.Option("mmimdb", "--task", help="mmimdb | food101 | hatememes."),
    missing_type: str = typer.Option("both", "--type", help="text | image | both."),
    ratio: float = typer.Option(0.7, "--ratio", help="Missing ratio (the papers: 0.5, 0.7, 0.9)."),
    seed: int = typer.Option(0, "--seed", help="The training run's seed (the reference's seed=0)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the .pt tables (the reference's missing_table_root)."),
):
    """Write the reference's missing tables (<split>_missing_<type>_<ratio>.pt) for a dataset's splits."""
    from kbridge.cli.common import fail, out
    from kbridge.engine.peers.classify.missing_tables import write_tables
    from kbridge.engine.errors import KbridgeError

    try:
        files = write_tables(data, task, missing_type, ratio, out_dir, seed)
    except KbridgeError as e:
        fail(str(e))
    for f in files:
        out.print(f"wrote {f}", markup=False)


@classify_app.command("export")
def export_cmd(model: str = ModelOpt, kind: str = KindOpt, task: Optional[str] = TaskOpt,
               out_file: Path = typer.Option(..., "--out", help="ONNX file to write (weights beside it in FILE.data)."),
               max_batch: int = typer.Option(256, "--max-batch", help="Largest batch the graph is meant for.")):
    """Export the classifier to ONNX: inputs pixel_values, input_ids, missing_type (dynamic batch)."""
    from kbridge.cli.common import fail, out
    from kbridge.engine.errors import KbridgeError
    from kbridge.engine.peers.classify import model as M
    from kbridge.engine.peers.classify.onnx import export
    from kbridge.export.onnx import ExportError

    try:
        p = export(M.load(_model_dir(model, kind, task)), out_file, max_batch)
    except (KbridgeError, ExportError) as e:
        fail(str(e))
    out.print(f"wrote {p}")


@classify_app.command("params")
def params_cmd(kind: str = typer.Option("dcp", "--kind"), task: str = typer.Option("mmimdb", "--task"),
               tiny: bool = typer.Option(False, "--tiny", help="The tiny twin's geometry instead of ViT-B/16.")):
    """Parameter counts of the architecture (built on the meta device: no weights needed)."""
    from kbridge.cli.common import fail, out
    from kbridge.engine.peers.classify.config import ClassifyError, full_config, tiny_config
    from kbridge.engine.peers.classify.model import build_meta, parameter_counts

    try:
        cfg = (tiny_config if tiny else full_config)(kind, task)
    except ClassifyError as e:
        fail(str(e))
    c = parameter_counts(build_meta(cfg))
    out.print(f"{kind} {task} ({'tiny' if tiny else 'ViT-B/16'}, prompt length {cfg.prompt_length}, depth "
              f"{cfg.prompt_depth}): total {c['total']:,}, trainable {c['trainable']:,} "
              f"({c['trainable_without_head']:,} without the head), learner {c['learner']:,}")


def _convert(kind: str, ckpt: Path, out_dir: Path, tokenizer: Path, trust: bool, seed: int,
             vision_heads: Optional[int], text_heads: Optional[int], classes: Optional[Path]) -> None:
    from kbridge.cli.common import fail, out
    from kbridge.engine.peers.classify.config import ClassifyError
    from kbridge.engine.peers.classify.convert import convert, read_class_names

    try:
        names = read_class_names(classes) if classes else None
        r = convert(ckpt, out_dir, kind, tokenizer, trust=trust, seed=seed, vision_heads=vision_heads,
                    text_heads=text_heads, class_names=names)
    except (ClassifyError, OSError) as e:
        fail(str(e))
    out.print(f"wrote {r['path']}: {kind} {r['task']} ({r['classes']} classes, {r['keys']} checkpoint keys); "
              f"use it with `kbridge classify eval --model {r['path']}`")


CkptOpt = typer.Option(..., "--ckpt", help="The published Lightning .ckpt (state_dict under model.* / <task>_classifier.*).")
OutOpt = typer.Option(..., "--out", help="Classifier directory to write (config.json, model.safetensors, tokenizer).")
TokOpt = typer.Option(..., "--tokenizer", help="Local CLIP tokenizer directory (tokenizer.json, or vocab.json + merges.txt).")
TrustOpt = typer.Option(False, "--trust-checkpoint",
                        help="Unpickle without the safe allow-list (can run code: only for files you trust).")
SeedOpt = typer.Option(0, "--seed", help="The training run's seed= (it fixes the unsaved dynamic queries).")
VHeads = typer.Option(None, "--vision-heads", help="Vision attention heads (default width/64).")
THeads = typer.Option(None, "--text-heads", help="Text attention heads (default width/64).")
ClassesOpt = typer.Option(None, "--classes", help="Head class names: JSON list, category.json or class_idx.json "
                          "(default: MM-IMDb's 23 genres, Hateful Memes' two, class_<i> for Food-101).")


def convert_dcp(ckpt: Path = CkptOpt, out_dir: Path = OutOpt, tokenizer: Path = TokOpt, trust: bool = TrustOpt,
                seed: int = SeedOpt, vision_heads: Optional[int] = VHeads, text_heads: Optional[int] = THeads,
                classes: Optional[Path] = ClassesOpt):
    """Convert a published DCP checkpoint (Deep Correlated Prompting) into a classifier directory."""
    _convert("dcp", ckpt, out_dir, tokenizer, trust, seed, vision_heads, text_heads, classes)


def convert_rep(ckpt: Path = CkptOpt, out_dir: Path = OutOpt, tokenizer: Path = TokOpt, trust: bool = TrustOpt,
                seed: int = SeedOpt, vision_heads: Optional[int] = VHeads, text_heads: Optional[int] = THeads,
                classes: Optional[Path] = ClassesOpt):
    """Convert a published REP checkpoint (Replay-Enhance Prompting) into a classifier directory."""
    _convert("rep", ckpt, out_dir, tokenizer, trust, seed, vision_heads, text_heads, classes)
