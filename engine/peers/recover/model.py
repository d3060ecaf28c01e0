"""DiCMoR (ICCV 2023): recover missing modalities in feature space, then fuse and regress.

Facts from REFERENCE.md §4; the code is ours. Inputs are sequence features [B, T, D] per modality
(text = BERT last hidden states, audio, vision; T = 50 in MMSA's aligned data). Modality order
everywhere in kbridge is (text, audio, vision); the reference indexes (text, vision, audio).

1. ``proj_{l,a,v}``: frozen kernel-5 Conv1d without padding or bias, D → d, giving [B, d, T−4].
2. Each modality's flow maps its features to a latent z (flows.py).
3. For a **missing** modality m, per sample:
   - one other modality x available: ``rec_m(flow_m.reverse(z_x))``;
   - both others available: ``rec_m(cat_m([flow_m.reverse(z_x); flow_m.reverse(z_y)]))`` with
     (x, y) in the reference's order (text, vision, audio) minus m.
   Available modalities keep their projected features; a missing modality's raw input is never
   read. The missing pattern is a [B, 3] bool tensor input, so each sample has its own pattern and
   the graph exports to ONNX (every candidate is computed, then selected with ``torch.where``).
   The reference instead draws one pattern per **batch** (``random.sample``, test time included,
   with shuffled loaders): a bug, since a sample's score then depends on its batch-mates and the
   RNG; per-sample patterns fix it.
4. MulT fusion (fusion.py): for each target t in (l, a, v), two crossmodal encoders with the other
   modalities as keys, concatenated to 2d, a self-attention ``trans_t_mem``, last time step.
5. h = [h_l; h_a; h_v] [B, 6d]; ``out_layer(proj2(relu(proj1(h))) + h)`` → the sentiment [B].

The class priors ``prior_{hp,p,wp,neutral,wn,n,hn}`` (label rounded to +3 … −3) only give the
training NLL; ``forward(..., labels=…)`` returns it as bits per dimension, per sample and
modality, without touching the prediction. The reference's ``weight_{l,v,a}`` linears are unused
and not built. Refiner ``rec_m``: Conv1d(d → 2d, 1), an RCAN group (``n_resblocks`` residual
blocks conv3–ReLU–conv3–channel attention, then conv3, residual around the group), Conv1d(2d → d, 1).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from kbridge.engine.peers.recover.flows import Flow, ZeroConv
from kbridge.engine.peers.recover.fusion import Encoder

MODALITIES = ("text", "audio", "vision")
"""Order of the missing-pattern columns and of ``RecoverConfig.dims``."""
SHORT = ("l", "a", "v")
PRIORS = ("hp", "p", "wp", "neutral", "wn", "n", "hn")
"""Class priors for rounded labels +3, +2, +1, 0, −1, −2, −3."""
_REF_ORDER = ("l", "v", "a")  # the reference's modality order, which fixes cat_m's input order


@dataclass(frozen=True)
class RecoverConfig:
    dims: tuple[int, int, int] = (768, 5, 20)
    """Feature widths (text, audio, vision): MOSI 768/5/20, MOSEI 768/74/35."""
    d: int = 32
    """Common width after the temporal convolutions: 32 (MOSI), 64 (MOSEI)."""
    heads: int = 8
    """Attention heads of every fusion encoder (not readable from a checkpoint)."""
    layers: int = 4
    """Crossmodal encoder layers (nlevels): 4 (MOSI), 6 (MOSEI); self-attention ones get max(layers, 3)."""
    n_flow: int = 32
    """Affine couplings per flow."""
    coupling_hidden: int = 64
    """Hidden width of each coupling's net."""
    n_resblocks: int = 20
    """Residual channel-attention blocks per refiner."""
    reduction: int = 16
    """Channel-attention squeeze ratio (2d → 2d / reduction)."""
    kernel: int = 5
    """Temporal conv kernel (no padding: T → T − kernel + 1)."""
    attn_mask: bool = True
    """Causal attention in the fusion encoders (the reference's setting)."""
    permute: bool = False
    """Fixed flow variant: swap channel halves between couplings (flows.py); off for published checkpoints."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RecoverConfig":
        d = dict(d)
        d["dims"] = tuple(d["dims"])
        return cls(**d)


MOSI = RecoverConfig()
MOSEI = RecoverConfig(dims=(768, 74, 35), d=64, layers=6)
TINY = RecoverConfig(dims=(32, 5, 20), d=8, heads=2, layers=1, n_flow=4, coupling_hidden=8, n_resblocks=2, reduction=4)
"""The twin: same structure, small widths (text width = the tiny BERT's hidden size)."""


class ChannelAttention(nn.Module):
    def __init__(self, c: int, reduction: int):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv1d(c, c // reduction, 1), nn.ReLU(), nn.Conv1d(c // reduction, c, 1),
                                     nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        return x * self.conv_du(x.mean(-1, keepdim=True))


class ResBlock(nn.Module):
    def __init__(self, c: int, reduction: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(c, c, 3, padding=1), nn.ReLU(), nn.Conv1d(c, c, 3, padding=1),
                                  ChannelAttention(c, reduction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Group(nn.Module):
    def __init__(self, c: int, blocks: int, reduction: int):
        super().__init__()
        self.body = nn.Sequential(*[ResBlock(c, reduction) for _ in range(blocks)], nn.Conv1d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def refiner(cfg: RecoverConfig) -> nn.Sequential:
    d = cfg.d
    return nn.Sequential(nn.Conv1d(d, 2 * d, 1), Group(2 * d, cfg.n_resblocks, cfg.reduction), nn.Conv1d(2 * d, d, 1))


def _gaussian_log_p(z: torch.Tensor, mean: torch.Tensor, log_sd: torch.Tensor) -> torch.Tensor:
    return -0.5 * math.log(2 * math.pi) - log_sd - 0.5 * (z - mean) ** 2 * torch.exp(-2 * log_sd)


class DiCMoR(nn.Module):
    """See the module docstring. Parameter names follow the reference checkpoint (convert.py)."""

    def __init__(self, cfg: RecoverConfig = MOSI):
        super().__init__()
        self.cfg = cfg
        d = cfg.d
        for m, dim in zip(SHORT, cfg.dims):
            setattr(self, f"proj_{m}", nn.Conv1d(dim, d, cfg.kernel, bias=False))
            setattr(self, f"flow_{m}", Flow(d, cfg.n_flow, cfg.coupling_hidden, cfg.permute))
            setattr(self, f"rec_{m}", refiner(cfg))
            setattr(self, f"cat_{m}", nn.Conv1d(2 * d, d, 1))
            setattr(self, f"trans_{m}_mem", Encoder(2 * d, cfg.heads, max(cfg.layers, 3), cfg.attn_mask))
            for o in SHORT:
                if o != m:
                    setattr(self, f"trans_{m}_with_{o}", Encoder(d, cfg.heads, cfg.layers, cfg.attn_mask))
        for p in PRIORS:
            setattr(self, f"prior_{p}", ZeroConv(d, 2 * d))
        self.proj1 = nn.Linear(6 * d, 6 * d)
        self.proj2 = nn.Linear(6 * d, 6 * d)
        self.out_layer = nn.Linear(6 * d, 1)
        for m in SHORT:  # frozen in the reference too (run under no_grad)
            getattr(self, f"proj_{m}").requires_grad_(False)

    def complete(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor, missing: torch.Tensor,
                 detach_reverse: bool = False,
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Features [B, T, D_m] and missing [B, 3] (bool, text/audio/vision) → (completed features,
        latents, log-dets): dicts over l/a/v of [B, d, T'], [B, d, T'], [B]. ``detach_reverse``:
        the reverse passes carry no gradient (training: the flows learn through the NLL alone)."""
        conv, z, logdet = {}, {}, {}
        for m, x in zip(SHORT, (text, audio, vision)):
            conv[m] = getattr(self, f"proj_{m}")(x.transpose(1, 2))
            z[m], logdet[m] = getattr(self, f"flow_{m}")(conv[m])
        miss = {m: missing[:, i].bool()[:, None, None] for i, m in enumerate(SHORT)}  # [B, 1, 1]
        out = {}
        for m in SHORT:
            x, y = (o for o in _REF_ORDER if o != m)
            flow, rec, cat = getattr(self, f"flow_{m}"), getattr(self, f"rec_{m}"), getattr(self, f"cat_{m}")
            r_x, r_y = flow.reverse(z[x]), flow.reverse(z[y])
            if detach_reverse:
                r_x, r_y = r_x.detach(), r_y.detach()
            n = r_x.shape[0]
            # one refiner pass over the three candidates, stacked on the batch axis: [3B, d, T']
            cand = rec(torch.cat([r_x, r_y, cat(torch.cat([r_x, r_y], 1))], 0))
            from_x, from_y, from_both = cand[:n], cand[n:2 * n], cand[2 * n:]
            # x and y both available → fused; one available → that one; (neither: rejected upstream)
            recovered = torch.where(miss[x], from_y, torch.where(miss[y], from_x, from_both))
            out[m] = torch.where(miss[m], recovered, conv[m])
        return out, z, logdet

    def complete_one_pattern(self, feats: tuple[torch.Tensor, ...], missing: tuple[bool, bool, bool],
                             ) -> dict[str, torch.Tensor]:
        """``complete`` for a batch that shares one pattern, computing only what the pattern needs:
        no projection, flow or reverse for a modality nobody reads, one refiner pass per missing
        modality (``complete`` runs 3 flows, 6 reverses and 9 refiner passes whatever the pattern)."""
        miss = dict(zip(SHORT, missing))
        avail = [m for m in SHORT if not miss[m]]
        conv = {m: getattr(self, f"proj_{m}")(feats[SHORT.index(m)].transpose(1, 2)) for m in avail}
        z = {m: getattr(self, f"flow_{m}")(conv[m])[0] for m in avail} if len(avail) < 3 else {}
        out = dict(conv)
        for m in SHORT:
            if not miss[m]:
                continue
            x, y = (o for o in _REF_ORDER if o != m)
            flow, rec = getattr(self, f"flow_{m}"), getattr(self, f"rec_{m}")
            if miss[x] or miss[y]:
                out[m] = rec(flow.reverse(z[y] if miss[x] else z[x]))
            else:
                out[m] = rec(getattr(self, f"cat_{m}")(torch.cat([flow.reverse(z[x]), flow.reverse(z[y])], 1)))
        return out

    def bits_per_dim(self, z: dict[str, torch.Tensor], logdet: dict[str, torch.Tensor],
                     labels: torch.Tensor) -> torch.Tensor:
        """Per-sample NLL in bits per dimension under the label's class prior → [B, 3] (l, a, v).
        (The reference averages it over the batch and clamps at 0; only training uses it.)"""
        cls = (3 - torch.round(labels.clamp(-3, 3))).long()  # +3 → 0 (hp) … −3 → 6 (hn)
        zero = z["l"].new_zeros(1, self.cfg.d, 1, 1)
        stats = torch.stack([getattr(self, f"prior_{p}")(zero).flatten(1) for p in PRIORS])  # [7, 1, 2d]
        mean, log_sd = stats[cls, 0].chunk(2, -1)  # [B, d] each
        cols = []
        for m in SHORT:
            lp = _gaussian_log_p(z[m], mean[..., None], log_sd[..., None]).flatten(1).sum(1) + logdet[m]
            cols.append(-lp / (math.log(2) * z[m][0].numel()))
        return torch.stack(cols, 1)

    def forward(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor, missing: torch.Tensor,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """text [B, T, D_l], audio [B, T, D_a], vision [B, T, D_v], missing [B, 3] bool, labels [B]
        or None → (prediction [B], bits per dim [B, 3] or None). The prediction never reads labels."""
        feats, z, logdet = self.complete(text, audio, vision, missing)
        return self.fuse(feats), None if labels is None else self.bits_per_dim(z, logdet, labels)

    @torch.no_grad()
    def predict_pattern(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor,
                        missing: tuple[bool, bool, bool]) -> torch.Tensor:
        """The prediction [B] of ``forward`` for a batch sharing one pattern (text, audio, vision
        missing), through ``complete_one_pattern``."""
        return self.fuse(self.complete_one_pattern((text, audio, vision), missing))

    def fuse(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Completed features (l/a/v: [B, d, T']) → the MulT-style fusion's prediction [B]."""
        seq = {m: f.permute(2, 0, 1) for m, f in feats.items()}  # [T', B, d]
        last = []
        for m in SHORT:
            x, y = (o for o in SHORT if o != m)
            h = torch.cat([getattr(self, f"trans_{m}_with_{x}")(seq[m], seq[x]),
                           getattr(self, f"trans_{m}_with_{y}")(seq[m], seq[y])], -1)  # [T', B, 2d]
            last.append(getattr(self, f"trans_{m}_mem")(h)[-1])
        h = torch.cat(last, -1)  # [B, 6d]
        return self.out_layer(self.proj2(torch.relu(self.proj1(h))) + h).squeeze(-1)


def onnx_spec(cfg: RecoverConfig, steps: int = 50, max_batch: int = 64):
    """The export spec of ``OnnxCore``: features [batch, steps, D_m], missing [batch, 3] (int64 0/1,
    text/audio/vision) → prediction [batch]. Use with ``kbridge.export.onnx.export_onnx``."""
    from kbridge.export.specs import Axis, ExportSpec, TensorSpec

    feats = tuple(TensorSpec(n, ("batch", steps, d)) for n, d in zip(MODALITIES, cfg.dims))
    return ExportSpec("dicmor.core", feats + (TensorSpec("missing", ("batch", 3), "int64", high=2),),
                      (TensorSpec("prediction", ("batch",)),), (Axis("batch", 1, min(8, max_batch), max_batch, 3),))


class OnnxCore(nn.Module):
    """The exportable graph: (text, audio, vision, missing) → (prediction,)."""

    def __init__(self, model: DiCMoR):
        super().__init__()
        self.model = model

    def forward(self, text, audio, vision, missing):
        return (self.model(text, audio, vision, missing)[0],)
