"""``kbridge recover`` and ``kbridge models convert-dicmor``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def recover(
    model: str = typer.Option("tiny", "--model", help="A `convert-dicmor` directory, or tiny (the random twin)."),
    data: Path = typer.Option(..., "--data", help="MMSA aligned pickle (aligned_50.pkl)."),
    missing: Optional[list[str]] = typer.Option(
        None, "--missing", help="Missing modalities for every sample (text, audio, vision, audio+vision, none; "
                                "repeatable), or a JSON file {sample id: [missing modalities]}. Default: every pattern."),
    missing_rate: Optional[float] = typer.Option(
        None, "--missing-rate", help="The paper's protocol instead of --missing: rate 0.1–0.7, a per-batch mixture "
                                     "of one and two missing modalities; one row per seed and their mean."),
    seed: Optional[list[int]] = typer.Option(None, "--seed", help="With --missing-rate (repeatable; default the "
                                                                   "reference's seeds 1111–1119)."),
    rate_batch: int = typer.Option(32, "--rate-batch", help="With --missing-rate: the batch the pattern is drawn "
                                                            "for (the reference: 4 on MOSI, 16 on MOSEI)."),
    split: str = typer.Option("test", "--split", help="train | valid | test."),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N."),
    backend: str = typer.Option("torch", "--backend", help="torch | onnx (the full graph, exported once into the cache)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """DiCMoR: recover missing modalities' features with normalising flows, predict sentiment, and
    report Acc-2 / F1 (non-zero labels and MMSA's Has0), Acc-5, Acc-7, MAE and Corr per missing pattern
    (or per seed of the paper's missing-rate protocol)."""
    from kbridge.cli.common import fail
    from kbridge.engine.config import build_config
    from kbridge.engine.errors import KbridgeError
    from kbridge.engine.peers.recover.evaluate import evaluate
    from kbridge.engine.peers.recover.tiny import load

    try:
        cache = build_config("tiny").cache_dir()
        net, text_mode, path = load(model, cache)
        from kbridge.engine.peers.recover.data import PUBLISHED_SEEDS

        rep = evaluate(net, text_mode, path, data, missing, split, batch_size, device, missing_rate,
                       tuple(seed) if seed else PUBLISHED_SEEDS, rate_batch, backend, cache)
    except KbridgeError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(rep.to_dict(), indent=1))
        return
    cols = {"Acc-2": "acc2", "F1": "f1", "Has0-Acc-2": "acc2_has0", "Has0-F1": "f1_has0", "Acc-5": "acc5",
            "Acc-7": "acc7", "MAE": "mae", "Corr": "corr"}
    w = max(len("missing"), *(len(r.pattern) for r in rep.rows))
    # plain lines (a table this wide would be cropped on an 80-column terminal); Acc / F1 ×100
    print(f"DiCMoR recover: {data} [{split}] (Acc and F1 ×100)")
    print(f"{'missing':<{w}} {'n':>6}" + "".join(f" {c:>10}" for c in cols))
    for r in rep.rows:
        m = r.metrics
        print(f"{r.pattern:<{w}} {r.n:>6}" + "".join(
            f" {'n/a' if m[k] != m[k] else f'{m[k]:.3f}' if k in ('mae', 'corr') else f'{100 * m[k]:.2f}':>10}"
            for k in cols.values()))


def convert_dicmor(
    ckpt: Path = typer.Option(..., "--ckpt", help="DiCMoR state dict (pt/dicmor-mosi.pth, dicmor-mosei.pth)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory to write; use it as `kbridge recover --model DIR`."),
    bert: Optional[str] = typer.Option(None, "--bert", help="Local bert-base-uncased directory (config, tokenizer), "
                                                             "or tiny; omit to read the pickle's `text` features."),
    heads: int = typer.Option(8, "--heads", help="Fusion attention heads (DiCMoR: 8)."),
    trust: bool = typer.Option(False, "--trust-checkpoint", help="Unpickle beyond tensors (only for files you trust)."),
):
    """Convert a published DiCMoR checkpoint into a kbridge model directory."""
    from kbridge.cli.common import fail, out
    from kbridge.engine.errors import KbridgeError
    from kbridge.engine.peers.recover.convert import convert

    try:
        p = convert(ckpt, out_dir, bert if bert in (None, "tiny") else Path(bert), heads=heads, trust=trust)
    except KbridgeError as e:
        fail(str(e))
    out.print(f"wrote {p}: run `kbridge recover --model {p} --data aligned_50.pkl`")


def train_dicmor(
    model: str = typer.Option("tiny", "--model", help="Starting weights: a `convert-dicmor` directory (the reference "
                                                       "starts from its MR = 0 pretrained model), or tiny."),
    data: Path = typer.Option(..., "--data", help="MMSA aligned pickle: trains on its train split, validates on valid."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the best validation epoch's model (use it as "
                                                    "`kbridge recover --model DIR`); a killed run resumes from it."),
    missing_rate: float = typer.Option(0.1, "--missing-rate", help="The missing-rate protocol's rate (0.1–0.7)."),
    epochs: int = typer.Option(1000, "--epochs", help="Upper bound: 10 epochs without a better validation L1 end it."),
    batch_size: int = typer.Option(4, "--batch-size", help="The reference: 4 on MOSI, 16 on MOSEI."),
    lr: float = typer.Option(1e-4, "--lr", help="Adam's learning rate (the reference's 1e-4)."),
    seed: int = typer.Option(1111, "--seed", help="Seeds the missing patterns drawn each epoch."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """DiCMoR: train with the reference's loss and schedule (L1 + 0.1 · flows' NLL and recovery MSE,
    one missing pattern per batch, Adam, clipping, accumulation over 8 batches, LR halving on plateau,
    early stopping) and write the best validation epoch's model."""
    from kbridge.cli.common import fail, out
    from kbridge.engine.config import build_config
    from kbridge.engine.errors import KbridgeError
    from kbridge.engine.peers.recover.tiny import load
    from kbridge.engine.peers.recover.train import TrainConfig, train_dir

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, missing_rate=missing_rate, seed=seed)
    try:
        net, text_mode, path = load(model, build_config("tiny").cache_dir())
        rep = train_dir(net, text_mode, path, data, out_dir, cfg,
                        on_epoch=None if as_json else lambda e, h: out.print(
                            f"epoch {e}: train L1 {h['train_l1'][-1]:.4f}, valid L1 {h['valid_l1'][-1]:.4f}"))
    except KbridgeError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(rep, indent=1))
        return
    out.print(f"wrote {out_dir}: best valid L1 {rep['best_valid']:.4f} at epoch {rep['best_epoch']} of {rep['epochs']}"
              + (f" (resumed after epoch {rep['resumed_from']})" if rep["resumed_from"] else ""))
