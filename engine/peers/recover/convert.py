"""DiCMoR's published checkpoint layout ↔ ours, and the model directory.

The reference saves ``torch.save(model.state_dict())`` (``pt/dicmor-{mosi,mosei}.pth``; the MR = 0
``pretrained-*.pth`` carries an MMSA ``Model.`` prefix). Its keys are ours except:

- flows: reference ``flow_m.blocks.0.flows.{i}.coupling.*`` is our ``flow_m.couplings.{i}.*``;
- ``DEAD`` keys, dropped: ActNorm and invertible-1×1 parameters and the block prior (never called
  by the flows), ``weight_{l,v,a}`` (never called), fairseq's ``version`` and
  ``embed_positions._float_tensor`` bookkeeping buffers;
- ``text_model.model.*`` is BERT (Hugging Face ``BertModel`` names), saved separately.

Every reference key must be either used (with our shape) or dead, and every one of our keys must be
found, or conversion fails. ``reference_layout(cfg)`` lists the full reference state dict (names,
shapes, dtypes) we expect, which tests compare with the key lists in the design notes.

A model directory holds ``config.json`` (``{"kind": "dicmor", "config": RecoverConfig, "text":
"bert" | "features"}``), ``model.safetensors`` and, for ``text = "bert"``, ``bert/`` (a Hugging
Face BERT directory with its tokenizer files when known).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from kbridge.engine.errors import KbridgeError
from kbridge.engine.peers.recover.model import SHORT, DiCMoR, RecoverConfig

BERT_PREFIX = "text_model.model."
DEAD = re.compile(r"(flow_[lav]\.blocks\.0\.(flows\.\d+\.(actnorm|invconv)\.|prior\.)|weight_[lav]\."
                  r"|trans_\w+\.(version$|embed_positions\._float_tensor$))")
_FLOW_REF = re.compile(r"^(flow_[lav])\.blocks\.0\.flows\.(\d+)\.coupling\.(.+)$")
_FLOW_OURS = re.compile(r"^(flow_[lav])\.couplings\.(\d+)\.(.+)$")


class ConversionError(KbridgeError):
    """A checkpoint or model directory does not have the DiCMoR layout."""


def to_ours(key: str) -> str:
    m = _FLOW_REF.match(key)
    return f"{m[1]}.couplings.{m[2]}.{m[3]}" if m else key


def to_reference_key(key: str) -> str:
    m = _FLOW_OURS.match(key)
    return f"{m[1]}.blocks.0.flows.{m[2]}.coupling.{m[3]}" if m else key


def _dead_layout(cfg: RecoverConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    d, f32 = cfg.d, torch.float32
    out = {}
    for m in SHORT:
        for i in range(cfg.n_flow):
            p = f"flow_{m}.blocks.0.flows.{i}."
            out[p + "actnorm.loc"] = ((1, d, 1, 1), f32)
            out[p + "actnorm.scale"] = ((1, d, 1, 1), f32)
            out[p + "actnorm.initialized"] = ((), torch.uint8)
            out[p + "invconv.weight"] = ((d, d, 1, 1), f32)
        p = f"flow_{m}.blocks.0.prior."
        out.update({p + "scale": ((1, 2 * d, 1, 1), f32), p + "conv.weight": ((2 * d, d, 1, 1), f32),
                    p + "conv.bias": ((2 * d,), f32)})
        out[f"weight_{m}.weight"] = ((2 * d, 2 * d), f32)
        out[f"weight_{m}.bias"] = ((2 * d,), f32)
        for enc in [f"trans_{m}_mem"] + [f"trans_{m}_with_{o}" for o in SHORT if o != m]:
            out[f"{enc}.version"] = ((1,), f32)
            out[f"{enc}.embed_positions._float_tensor"] = ((1,), f32)
    return out


def reference_layout(cfg: RecoverConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The reference state dict without BERT for this config: key → (shape, dtype). Built on the
    meta device, so full sizes cost nothing."""
    with torch.device("meta"):
        model = DiCMoR(cfg)
    ours = {to_reference_key(k): (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    return ours | _dead_layout(cfg)


def unprefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip MMSA's ``Model.`` prefix (``pretrained-*.pth``) when every key has it."""
    if sd and all(k.startswith("Model.") for k in sd):
        return {k[len("Model."):]: v for k, v in sd.items()}
    return sd


def infer_config(sd: dict[str, torch.Tensor], heads: int = 8, permute: bool = False) -> RecoverConfig:
    """Read the architecture off a reference state dict's shapes (heads cannot be read: argument)."""
    try:
        proj = [sd[f"proj_{m}.weight"] for m in SHORT]  # [d, D_m, k]
        n_flow = len({k.split(".")[4] for k in sd if k.startswith("flow_l.blocks.0.flows.")})
        blocks = len({k.split(".")[3] for k in sd if re.match(r"rec_l\.1\.body\.\d+\.body\.", k)})
        layers = len({k.split(".")[2] for k in sd if k.startswith("trans_l_with_a.layers.")})
        d = proj[0].shape[0]
        squeeze = sd["rec_l.1.body.0.body.3.conv_du.0.weight"].shape[0]
        return RecoverConfig(dims=tuple(int(p.shape[1]) for p in proj), d=int(d), heads=heads, layers=layers,
                             n_flow=n_flow, coupling_hidden=int(sd["flow_l.blocks.0.flows.0.coupling.net.0.weight"].shape[0]),
                             n_resblocks=blocks, reduction=int(2 * d // squeeze), kernel=int(proj[0].shape[2]),
                             permute=permute)
    except (KeyError, IndexError) as e:
        raise ConversionError(f"not a DiCMoR state dict: cannot read the architecture ({e})") from None


def split_reference(sd: dict[str, torch.Tensor], cfg: RecoverConfig,
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Reference state dict → (our state dict, BERT state dict, dropped dead keys). Raises
    ConversionError on any key that is neither used nor dead, a shape mismatch, or a missing key."""
    sd = unprefix(sd)
    expected = {k: tuple(v[0]) for k, v in reference_layout(cfg).items()}
    ours, bert, dead = {}, {}, []
    for k, v in sd.items():
        if k.startswith(BERT_PREFIX):
            bert[k[len(BERT_PREFIX):]] = v
        elif k not in expected:
            raise ConversionError(f"unexpected checkpoint key {k!r} (not in the DiCMoR layout)")
        elif tuple(v.shape) != expected[k]:
            raise ConversionError(f"checkpoint key {k!r} has shape {tuple(v.shape)}, expected {expected[k]}")
        elif DEAD.search(k):
            dead.append(k)
        else:
            ours[to_ours(k)] = v
    missing = sorted(set(expected) - set(sd) - {k for k in expected if DEAD.search(k)})
    if missing:
        raise ConversionError(f"checkpoint lacks {len(missing)} DiCMoR keys, e.g. {missing[:3]}")
    return ours, bert, dead


def to_reference(model: DiCMoR) -> dict[str, torch.Tensor]:
    """Our weights under the reference names (dead keys excluded), for tests and exporting back."""
    return {to_reference_key(k): v for k, v in model.state_dict().items()}


def save_dir(out: Path, model: DiCMoR, bert_dir: Path | None, source: str) -> Path:
    """Write config.json + model.safetensors; ``bert_dir`` must already be out/bert when given."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    meta = {"kind": "dicmor", "config": model.cfg.to_dict(), "text": "bert" if bert_dir else "features",
            "source": source}
    (out / "config.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def load_dir(path: Path) -> tuple[DiCMoR, str]:
    """A model directory → (DiCMoR in eval mode, text mode "bert" | "features")."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: not a DiCMoR model directory ({e})") from None
    if meta.get("kind") != "dicmor":
        raise ConversionError(f"{path}: config.json is not a DiCMoR model (kind={meta.get('kind')!r}); "
                              f"convert the checkpoint with `kbridge models convert-dicmor`")
    model = DiCMoR(RecoverConfig.from_dict(meta["config"]))
    try:
        model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    except (OSError, RuntimeError) as e:
        raise ConversionError(f"{path}: weights do not load: {str(e).splitlines()[0][:300]}") from None
    return model.eval(), meta.get("text", "features")


def load_checkpoint(ckpt: Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """A reference .pth → its state dict (read by engine.published: tensors and known publisher
    classes only, unless ``trust``)."""
    from kbridge.engine.published import PublishedCheckpointError, load

    try:
        obj = load(Path(ckpt), trust)
    except PublishedCheckpointError as e:
        raise ConversionError(str(e)) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{ckpt}: expected a plain state dict of tensors")
    return obj


def convert(ckpt: Path, out: Path, bert: Path | None = None, heads: int = 8, trust: bool = False) -> Path:
    """``kbridge models convert-dicmor``. ``bert``: a local BERT directory (bert-base-uncased), used
    for its config and tokenizer (and its weights when the checkpoint has none); ``"tiny"`` for the
    tiny BERT twin. Without it the model reads the pickle's precomputed ``text`` features. Written
    all at once: a failed conversion leaves nothing at ``out``."""
    from kbridge.engine.published import PublishedCheckpointError, output_dir
    from kbridge.engine.peers.recover import text as text_enc

    sd = unprefix(load_checkpoint(Path(ckpt), trust))
    cfg = infer_config(sd, heads=heads)
    ours, bert_sd, dead = split_reference(sd, cfg)
    model = DiCMoR(cfg)
    model.load_state_dict(ours, strict=True)
    if bert is None and bert_sd:
        raise ConversionError(f"{ckpt}: holds BERT weights (text_model.model.*); pass --bert DIR with the "
                              f"bert-base-uncased config and tokenizer")
    try:
        with output_dir(out) as tmp:
            bert_out = text_enc.write_bert(tmp / "bert", bert, bert_sd or None, cfg.dims[0]) if bert is not None else None
            save_dir(tmp, model, bert_out, source=Path(ckpt).name)
            (tmp / "dropped.txt").write_text("".join(k + "\n" for k in dead))
    except PublishedCheckpointError as e:
        raise ConversionError(str(e)) from None
    return Path(out)
