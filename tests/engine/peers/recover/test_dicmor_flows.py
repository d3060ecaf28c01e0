"""Flow invertibility, log-determinants and the channel-permutation option."""
import pytest
import torch

from kbridge.engine.peers.recover.flows import Flow
from kbridge.engine.peers.recover.model import MOSI, SHORT, TINY
from kbridge.engine.peers.recover.tiny import build, randomize


def _flows():
    """Every flow of the tiny twin, with and without the permutation option."""
    for permute in (False, True):
        model = build(TINY.__class__(**{**TINY.to_dict(), "permute": permute}), seed=3)
        for m in SHORT:
            yield permute, m, getattr(model, f"flow_{m}")


@pytest.mark.parametrize("permute, m, flow", list(_flows()), ids=lambda v: str(v) if not isinstance(v, Flow) else "")
def test_reverse_inverts_forward(permute, m, flow):
    x = torch.randn(4, TINY.d, 11, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        z, _ = flow(x)
        assert (z - x).abs().max() > 1e-2  # the flow is not the identity
        assert (flow.reverse(z) - x).abs().max() <= 1e-5


def test_full_width_flow_inverts_and_half_passes_through():
    """MOSI width (d 32, 32 couplings, hidden 64), the reference's setting: exact inverse, and the
    first d/2 channels pass unchanged because nothing permutes them (REFERENCE.md §4.3)."""
    torch.manual_seed(0)
    flow = Flow(MOSI.d, MOSI.n_flow, MOSI.coupling_hidden)
    for c in flow.couplings:
        torch.nn.init.normal_(c.net[4].conv.weight, 0, 0.05)
    x = torch.randn(3, MOSI.d, 46)
    with torch.no_grad():
        z, _ = flow(x)
        assert (flow.reverse(z) - x).abs().max() <= 1e-5
    h = MOSI.d // 2
    assert torch.equal(z[:, :h], x[:, :h])
    assert ((z[:, h:] - x[:, h:]).abs().amax(dim=(0, 2)) > 1e-3).all()


@pytest.mark.parametrize("permute", [False, True])
def test_logdet_is_the_jacobian_log_determinant(permute):
    torch.manual_seed(0)
    flow = randomize_flow(Flow(6, 3, 8, permute))
    x = torch.randn(1, 6, 2, dtype=torch.float64)
    flow = flow.double()
    jac = torch.autograd.functional.jacobian(lambda v: flow(v.view(1, 6, 2))[0].flatten(), x.flatten())
    _, logabs = torch.linalg.slogdet(jac)
    assert abs(flow(x)[1].item() - logabs.item()) <= 1e-9


def randomize_flow(flow: Flow) -> Flow:
    with torch.no_grad():
        for c in flow.couplings:
            for p in c.net[4].parameters():
                p.normal_(0, 0.3)
    return flow


def test_permutation_option_transforms_every_channel():
    x = torch.randn(2, TINY.d, 7, generator=torch.Generator().manual_seed(2))
    plain = build(TINY, seed=3).flow_a
    fixed = build(TINY.__class__(**{**TINY.to_dict(), "permute": True}), seed=3).flow_a
    with torch.no_grad():
        changed_plain = (plain(x)[0] - x).abs().amax(dim=(0, 2))  # per channel [d]
        changed_fixed = (fixed(x)[0] - x).abs().amax(dim=(0, 2))
    h = TINY.d // 2
    assert torch.all(changed_plain[:h] == 0) and torch.all(changed_plain[h:] > 1e-3)
    assert torch.all(changed_fixed > 1e-3)


def test_randomize_is_deterministic():
    a, b = build(TINY, seed=5), build(TINY, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(randomize(build(TINY), seed=1).flow_l.couplings[0].net[4].conv.weight,
                           build(TINY).flow_l.couplings[0].net[4].conv.weight)
