import pytest
import torch
from torch import nn

import bitladder
from bitladder import BitladderError, Int
from bitladder.methods.quantize.calibrate import find_blocks
from bitladder.methods.quantize.methods import GPTQ, RTN


def err(model, ref, x):
    with torch.no_grad():
        return float((model(x) - ref(x)).pow(2).mean())


def correlated(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 4, generator=g)
    return base @ torch.randn(4, k, generator=g) + 0.1 * torch.randn(n, k, generator=g)


@pytest.mark.parametrize("bits,group,sym", [(4, 16, True), (3, 16, False), (2, 32, False), (4, None, True)])
def test_gptq_beats_rtn_on_output_error(bits, group, sym):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))
    x = correlated(512, 64)
    rtn = bitladder.quantize(model, Int(bits, group=group, symmetric=sym, method=RTN(clip_search=True)))
    gptq = bitladder.quantize(model, Int(bits, group=group, symmetric=sym, method=GPTQ()), calib=[x[:256]])
    assert err(gptq, model, x[256:]) < 0.8 * err(rtn, model, x[256:])


def test_gptq_codes_respect_format_and_reload(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    x = torch.randn(64, 3, 8, 8)
    q = bitladder.quantize(model, Int(3, group=8, method=GPTQ()), calib=[x])
    codes = q[0].qweight.codes()
    assert int(codes.min()) >= -4 and int(codes.max()) <= 3
    assert q[0].qmeta["method"] == "gptq" and q[3].qmeta["method"] == "gptq"
    back = bitladder.load(bitladder.save(q, tmp_path / "g.safetensors"), model=model)
    assert torch.equal(back(x), q(x))


def test_blocks_are_found_and_processed_in_order():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, h):
            return h + self.b(torch.relu(self.a(h)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 16)
            self.blocks = nn.ModuleList(Block() for _ in range(3))
            self.out = nn.Linear(16, 4)

        def forward(self, x):
            h = self.inp(x)
            for blk in self.blocks:
                h = blk(h)
            return self.out(h)

    net = Net()
    assert find_blocks(net) == ["blocks.0", "blocks.1", "blocks.2"]
    x = torch.randn(128, 8)
    q = bitladder.quantize(net, Int(4, method=GPTQ()), calib=[x])
    assert all(m.qmeta["method"] == "gptq" for n, m in q.named_modules() if hasattr(m, "qmeta"))
    assert err(q, net, x) < err(bitladder.quantize(net, Int(4)), net, x)


def test_calibration_errors():
    lin = nn.Linear(8, 4)
    with pytest.raises(BitladderError, match="needs calibration data"):
        bitladder.quantize(lin, Int(4, method=GPTQ()))
    with pytest.raises(BitladderError, match="at least 16 calibration samples, got 3"):
        bitladder.quantize(lin, Int(4, method=GPTQ()), calib=[torch.randn(3, 8)])
    with pytest.raises(BitladderError, match="tensors or dicts"):
        bitladder.quantize(lin, Int(4, method=GPTQ()), calib=[[1, 2]])
    with pytest.raises(BitladderError, match="damp"):
        GPTQ(damp=0)


def test_singular_hessian_is_damped(caplog):
    lin = nn.Linear(8, 4)
    x = torch.zeros(32, 8)
    x[:, 0] = 1.0  # rank one: most columns never see signal
    q = bitladder.quantize(lin, Int(4, method=GPTQ(damp=1e-6)), calib=[x])
    assert torch.isfinite(q(x)).all()


def test_method_round_trips_through_config_dict():
    cfg = Int(3, group=64, symmetric=False, method=GPTQ(damp=0.05, act_order=False))
    assert bitladder.config_from_dict(cfg.to_dict()) == cfg


def test_mismatched_calibration_data_is_one_clear_error():
    model = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(BitladderError, match="calibration batch 0 does not fit the model"):
        bitladder.quantize(model, Int(4, method=GPTQ()), calib=[torch.randn(32, 5)])


def _textbook_gptq(w, h, qtype, group, symmetric, damp=0.01):
    """GPTQ as the paper writes it: float64, no lazy batches, an explicit inverse; same static groups."""
    from bitladder.formats.layout import Layout
    from bitladder.methods.quantize.clip import search_qparams

    w = w.double().clone()
    c, k = w.shape
    scale, zp = search_qparams(Layout("group", 0, group).to_blocks(w.float()), qtype, symmetric, torch.float16)
    s = scale.reshape(c, -1).repeat_interleave(group, 1).double()
    z = torch.zeros_like(s) if zp is None else zp.reshape(c, -1).repeat_interleave(group, 1).double()
    perm = torch.argsort(torch.diag(h), descending=True)
    w, s, z, h = w[:, perm], s[:, perm], z[:, perm], h[perm][:, perm].double()
    hd = h + damp * torch.diag(h).mean() * torch.eye(k, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(hd), upper=True)
    q = torch.zeros_like(w)
    for j in range(k):
        q[:, j] = torch.clamp(torch.round(w[:, j] / s[:, j]) + z[:, j], qtype.qmin, qtype.qmax)
        e = (w[:, j] - (q[:, j] - z[:, j]) * s[:, j]) / u[j, j]
        w[:, j:] -= e[:, None] * u[j, j:][None, :]
    codes = torch.empty_like(q)
    codes[:, perm] = q
    return codes.to(torch.int32)


@pytest.mark.parametrize("name,sym", [("int4", True), ("uint3", False)])
def test_gptq_sweep_matches_the_textbook_algorithm(name, sym):
    from bitladder.formats.layout import Layout
    from bitladder.formats.qtypes import QTYPES
    from bitladder.methods.quantize.gptq import gptq_rows

    g = torch.Generator().manual_seed(5)
    w = torch.randn(48, 320, generator=g)
    x = correlated(1024, 320, seed=5)
    h = 2 * x.double().T @ x.double() / x.shape[0]
    qtype = QTYPES[name]
    h0 = h.clone()
    codes, _, _ = gptq_rows(w, h, qtype, Layout("group", -1, 32), sym, torch.float16, block_size=64)
    assert torch.equal(h, h0)  # the caller's Hessian is read, never modified
    ref = _textbook_gptq(w, h, qtype, 32, sym)
    # float32 lazy batches against float64 one column at a time: a few codes may round the other way
    assert float((codes == ref).float().mean()) > 0.99


def _damped_inverse_ref(h, inv):
    """(P^T (H + d mean(diag) I) P)^-1 in float64, dead inputs' diagonal set to 1 first (as the sweep sees it)."""
    h = h.double().clone()
    h.diagonal()[inv.dead] = 1.0
    h.diagonal().add_(inv.damp * float(h.diagonal().mean()))
    p = inv.perm
    return torch.linalg.inv(h[p[:, None], p])


@pytest.mark.parametrize("act_order", [True, False])
def test_inverse_factor_gives_the_damped_inverse(act_order):
    from bitladder.methods.quantize.gptq import _SOLVE_COLUMNS, inverse

    k = 2 * _SOLVE_COLUMNS + 37  # several slabs, the last one partial
    x = correlated(2048, k, seed=3)
    x[:, 5] = 0.0  # a dead input
    h = 2 * x.double().T @ x.double() / x.shape[0]
    inv = inverse(h, 0.01, act_order)
    assert bool(inv.dead[5]) and int(inv.dead.sum()) == 1
    if act_order:
        assert bool((torch.diff(torch.diag(h)[inv.perm][~inv.dead[inv.perm]]) <= 0).all())
    assert torch.equal(inv.u, torch.triu(inv.u))
    ref = _damped_inverse_ref(h, inv)
    got = inv.u.double().T @ inv.u.double()
    assert float((got - ref).abs().max()) < 1e-5 * float(ref.abs().max())
    again = inverse(h.clone(), 0.01, act_order, consume=True)
    assert torch.equal(again.u, inv.u) and torch.equal(again.perm, inv.perm)


def test_inverse_raises_the_damping_until_the_factorisation_succeeds(caplog):
    from bitladder.methods.quantize.gptq import inverse

    x = correlated(512, 40, seed=4)
    h = 2 * x.double().T @ x.double() / x.shape[0]
    h.diagonal().sub_(0.05 * float(h.diagonal().mean()))  # indefinite: 1 % damping is not enough, 10 % is
    with caplog.at_level("WARNING", logger="bitladder"):
        inv = inverse(h, 0.01, True)
    assert inv.damp == pytest.approx(0.1) and "damping raised" in caplog.text
    ref = _damped_inverse_ref(h, inv)
    assert float((inv.u.double().T @ inv.u.double() - ref).abs().max()) < 1e-4 * float(ref.abs().max())
    with pytest.raises(ValueError, match="stays singular"):
        inverse(-h.abs() - torch.eye(40, dtype=torch.float64), 0.01, True)


def test_layers_sharing_a_collector_share_one_inverse_and_the_hessian_is_released():
    from bitladder.methods.quantize.gptq import HessianCollector

    c = HessianCollector(24)
    c.update(correlated(200, 24, seed=6))
    inv = c.inverse(0.01, True)
    assert c.inverse(0.01, True) is inv and c.h is None
    with pytest.raises(RuntimeError, match="released"):
        c.hessian
    with pytest.raises(RuntimeError, match="asked again"):
        c.inverse(0.1, True)


@pytest.mark.parametrize("sym", [True, False])
def test_sweeping_rows_a_slab_at_a_time_gives_the_same_codes(monkeypatch, sym):
    import bitladder.methods.quantize.gptq as gptq
    from bitladder.formats.layout import Layout
    from bitladder.formats.qtypes import QTYPES

    g = torch.Generator().manual_seed(7)
    w = torch.randn(100, 96, generator=g)
    x = correlated(512, 96, seed=7)
    h = 2 * x.double().T @ x.double() / x.shape[0]
    args = (QTYPES["int4" if sym else "uint4"], Layout("group", -1, 32), sym, torch.float16)
    whole = gptq.gptq_rows(w, h, *args, block_size=32)
    monkeypatch.setattr(gptq, "_SWEEP_ELEMENTS", 96 * 7)  # slabs of 7 rows, the last one partial
    slabs = gptq.gptq_rows(w, h, *args, block_size=32)
    for a, b in zip(whole, slabs):
        assert (a is None and b is None) or torch.equal(a, b)
