import pytest
import torch
from torch import nn

import bitladder
from bitladder import BitladderError, Int
from bitladder.formats.qtypes import QTYPES
from bitladder.methods.quantize.gptq import HessianCollector
from bitladder.methods.quantize.methods import AWQ, Act, GPTQ
from bitladder.methods.quantize.observers import OBSERVERS, make_observer


def outlier_data(n=512, k=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g)
    x[:, 3] *= 40.0  # one outlier channel, as in transformer activations
    return x


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_observers_cover_the_bulk_of_the_data(name):
    obs = make_observer(name)
    x = torch.randn(10_000)
    for part in x.split(1000):
        obs.update(part)
    s, z = obs.qparams(QTYPES["uint8"], symmetric=False)
    lo, hi = (QTYPES["uint8"].qmin - z) * s, (QTYPES["uint8"].qmax - z) * s
    assert float(lo) <= -2.0 and float(hi) >= 2.0  # at least ±2 sigma representable
    assert float(hi - lo) <= 2.2 * float(x.abs().max())


def test_percentile_and_kl_clip_outliers_minmax_does_not():
    x = torch.cat([torch.randn(100_000), torch.tensor([1000.0])])
    ranges = {}
    for name in ("minmax", "percentile", "kl"):
        obs = make_observer(name)
        obs.update(x)
        s, _ = obs.qparams(QTYPES["int8"], symmetric=True)
        ranges[name] = float(s) * 127
    assert ranges["minmax"] >= 1000 > 10 * ranges["percentile"] and ranges["kl"] < 100


@pytest.mark.parametrize("cpu", ["avx2", "native"])
def test_static_w8a8_tracks_float_and_is_saved(tmp_path, cpu, monkeypatch):
    monkeypatch.setenv("BITLADDER_CPU", cpu)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.randn(512, 32)
    q = bitladder.quantize(model, Int(8, act=Act(observer="minmax")), calib=[x[:256]])
    assert q[0].qmeta["act"] == {"qtype": "uint8", "observer": "minmax"}
    q(x[256:])
    if cpu == "avx2":  # 8-bit weights x uint8 inputs would saturate a 16-bit pair sum: the C kernel's 16-bit
        from bitladder.kernels import KERNELS  # pairs, else oneDNN's split codes, else the fake-quantised path

        exact = [k for k in ("int8-w8a8-c-static", "int8-w8a8-onednn-static") if KERNELS[k].available()]
        assert q[0].kernel == exact[0] if exact else "act-uint8" in q[0].kernel
    else:  # with VNNI the integer GEMM takes them
        assert "act-uint8" in q[0].kernel or q[0].kernel.endswith("-static")
    rel = float((q(x[256:]) - model(x[256:])).norm() / model(x[256:]).norm())
    assert rel < 0.02
    back = bitladder.load(bitladder.save(q, tmp_path / "a.safetensors"), model=model)
    assert torch.equal(back(x), q(x))


def test_smoothquant_moves_outliers_into_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64))
    x = outlier_data()
    plain = bitladder.quantize(model, Int(8, act=Act(bits=4)), calib=[x[:256]])
    smooth = bitladder.quantize(model, Int(8, act=Act(bits=4, smoothquant="auto")), calib=[x[:256]])
    assert "in_scale" in smooth[0].qmeta
    with torch.no_grad():
        ref = model(x[256:])
        e_plain = float((plain(x[256:]) - ref).pow(2).mean())
        e_smooth = float((smooth(x[256:]) - ref).pow(2).mean())
    assert e_smooth < 0.5 * e_plain


def test_smoothquant_with_gptq_sees_smoothed_inputs(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8))
    x = outlier_data()
    q = bitladder.quantize(model, Int(4, group=16, method=GPTQ(), act=Act(smoothquant=0.5)), calib=[x[:256]])
    rel = float((q(x[256:]) - model(x[256:])).norm() / model(x[256:]).norm())
    assert rel < 0.1
    back = bitladder.load(bitladder.save(q, tmp_path / "s.safetensors"), model=model)
    assert torch.equal(back(x), q(x))


def test_smoothquant_layers_keep_their_input_scale_through_a_calibrated_pass(monkeypatch):
    """GPTQ collects each later layer's Hessian on the partly quantised model: a layer swapped for its quantised
    version must apply SmoothQuant's 1/s from its first call on, or the next layer sees (W s) x."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8))
    x = outlier_data()
    seen = []
    update = HessianCollector.update
    # the collector itself, not its id: a freed first collector's id can be reused by the second
    monkeypatch.setattr(HessianCollector, "update", lambda self, rows: (seen.append((self, rows)),
                                                                        update(self, rows)))
    q = bitladder.quantize(model, Int(8, method=GPTQ(), act=Act(smoothquant=0.5, dynamic="token")),
                           calib=[x[:256]])
    order = [c for k, (c, _) in enumerate(seen) if all(c is not d for d, _ in seen[:k])]
    assert len(order) == 2
    second = torch.cat([r for c, r in seen if c is order[1]])
    with torch.no_grad():
        want = model[1](model[0](x[:256])) * q[2].in_scale  # the float model's input to layer 2, smoothed
    assert float((second - want).norm() / want.norm()) < 0.02


class _Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(32, 16), nn.Linear(32, 16)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], -1)


def test_smoothed_siblings_still_share_one_hessian(monkeypatch):
    """Layers reading one tensor share SmoothQuant's scale, so they get one product of it: calibration keeps them
    one group (one GPTQ Hessian, as without smoothing)."""
    torch.manual_seed(0)
    model, x = _Branches(), outlier_data()
    used = []
    inverse = HessianCollector.inverse
    monkeypatch.setattr(HessianCollector, "inverse", lambda self, *a: (used.append(self), inverse(self, *a))[1])
    q = bitladder.quantize(model, Int(8, method=GPTQ(), act=Act(smoothquant=0.5, dynamic="token")),
                           calib=[x[:128], x[128:256]])  # collectors are shared from the second batch on
    assert len(used) == 2 and used[0] is used[1]
    assert torch.equal(q.a.in_scale, q.b.in_scale)
    with torch.no_grad():
        assert float((q(x[256:]) - model(x[256:])).norm() / model(x[256:]).norm()) < 0.02


def test_awq_on_smoothquant_keeps_both_input_scales():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8))
    x = outlier_data()
    q = bitladder.quantize(model, Int(8, method=AWQ(), act=Act(smoothquant=0.5, dynamic="token")), calib=[x[:256]])
    with torch.no_grad():
        ref = model(x[256:])
        assert float((q(x[256:]) - ref).norm() / ref.norm()) < 0.02  # SmoothQuant's scale alone: 0.40


@pytest.mark.parametrize("bad,msg", [
    (lambda: Act(observer="max"), "accepted: minmax"), (lambda: Act(bits=1), "2..8"),
    (lambda: Act(smoothquant=2.0), "alpha in"), (lambda: make_observer("x"), "accepted"),
    (lambda: Int(8, act="uint8"), "act must be"), (lambda: Int(8, method=Act()), "method must be"),
    (lambda: Act(outliers=-1), "outliers must be a number of channels"),
    (lambda: Act(outliers=True), "outliers must be a number of channels"),
    (lambda: Act(outliers=4, dynamic="token"), "drop dynamic or outliers"),
])
def test_bad_activation_configs(bad, msg):
    with pytest.raises(BitladderError, match=msg):
        bad()


def test_act_needs_calibration():
    with pytest.raises(BitladderError, match="Act needs calibration data"):
        bitladder.quantize(nn.Linear(4, 4), Int(8, act=Act()))


def test_digits_static_int8_and_w4a8(digits_spec):
    from bitladder.pipeline.measure.evaluate import fidelity, outputs

    ref = outputs(digits_spec.model, digits_spec.eval_batches)
    base = fidelity(digits_spec, ref, ref)["fidelity"]
    cal = digits_spec.calib_batches
    w8a8 = bitladder.quantize(digits_spec.model, Int(8, act=Act()), calib=cal)
    w4a8 = bitladder.quantize(digits_spec.model, Int(4, group=32, method=GPTQ(), act=Act()), calib=cal)
    for model, budget in ((w8a8, 0.3), (w4a8, 1.0)):
        drop = 100 * (base - fidelity(digits_spec, outputs(model, digits_spec.eval_batches), ref)["fidelity"])
        assert drop <= budget


class _NormFed(nn.Module):
    """LayerNorm -> two siblings (q, k) -> GELU -> fc: only q and k read the norm's output."""

    def __init__(self) -> None:
        super().__init__()
        self.ln, self.q, self.k, self.fc = nn.LayerNorm(32), nn.Linear(32, 16), nn.Linear(32, 16), nn.Linear(16, 8)
        with torch.no_grad():
            self.ln.weight[3] = 40.0  # an outlier channel, as transformers' LayerNorms make

    def forward(self, x):
        h = self.ln(x)
        return self.fc(nn.functional.gelu(self.q(h) + self.k(h)))


def test_smoothquant_goes_where_the_paper_puts_it_and_siblings_share_a_scale():
    from bitladder.methods.quantize.activation import norm_fed

    torch.manual_seed(0)
    model, x = _NormFed().eval(), torch.randn(256, 32)
    assert norm_fed(model, ["q", "k", "fc"], x) == {"q", "k"}
    q = bitladder.quantize(model, Int(8, act=Act(dynamic="token", smoothquant=0.5)), calib=[x])
    assert "in_scale" not in q.fc.qmeta  # GELU output: not smoothed per token ("auto" -> "norm")
    assert torch.equal(q.q.in_scale, q.k.in_scale)  # one scale for the tensor both read
    assert q.q.in_scale.max() / q.q.in_scale.min() > 2  # and it does move the outlier channel
    with torch.no_grad():
        assert float((q(x) - model(x)).norm() / model(x).norm()) < 0.02
    every = bitladder.quantize(model, Int(8, act=Act(dynamic="token", smoothquant=0.5, smooth_layers="all")),
                               calib=[x])
    assert "in_scale" in every.fc.qmeta and torch.equal(every.q.in_scale, every.k.in_scale)
    static = bitladder.quantize(model, Int(8, act=Act(smoothquant=0.5)), calib=[x])  # per tensor: all
    assert "in_scale" in static.fc.qmeta


def test_smoothquant_without_norms_smooths_every_layer_and_rejects_unknown_placements():
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    q = bitladder.quantize(model, Int(8, act=Act(dynamic="token", smoothquant=0.5)), calib=[outlier_data()])
    assert "in_scale" in q[0].qmeta and "in_scale" in q[2].qmeta
    with pytest.raises(BitladderError, match="smooth_layers must be 'auto', 'norm' or 'all'"):
        Act(smoothquant=0.5, smooth_layers="ln")
    assert Act(smoothquant=0.5, dynamic="token").smoothed_layers == "norm"
    assert Act(smoothquant=0.5).smoothed_layers == Act(smoothquant=0.5, dynamic="tensor").smoothed_layers == "all"


def test_static_on_norm_fed_layers_per_token_on_the_rest(tmp_path):
    torch.manual_seed(0)
    model, x = _NormFed().eval(), torch.randn(256, 32)
    q = bitladder.quantize(model, Int(8, act=Act(smoothquant=0.5, static_layers="norm")), calib=[x])
    assert q.q.qmeta["act"]["qtype"] == q.k.qmeta["act"]["qtype"] == "uint8"  # calibrated grids
    assert "act" not in q.fc.qmeta and q.fc.kernel_policy == "int8-w8a8-token"  # GELU output: per token
    assert "in_scale" in q.q.qmeta and "in_scale" not in q.fc.qmeta  # smoothed where the paper puts it
    with torch.no_grad():
        assert float((q(x) - model(x)).norm() / model(x).norm()) < 0.03
    path = bitladder.save(q, tmp_path / "mix.safetensors")
    back = bitladder.load(path, model=_NormFed())
    with torch.no_grad():
        assert torch.allclose(back(x), q(x), atol=1e-5)
    for bad, msg in ((lambda: Act(static_layers="ffn"), "static_layers must be 'all' or 'norm'"),
                     (lambda: Act(static_layers="norm", dynamic="token"), "dynamic must be False")):
        with pytest.raises(BitladderError, match=msg):
            bad()
    with pytest.raises(BitladderError, match="dynamic W8A8 needs int8 symmetric weights"):
        bitladder.quantize(model, Int(4, group=16, act=Act(static_layers="norm")), calib=[x])


def test_outlier_channels_are_the_widest_after_smoothing_and_siblings_share_them():
    torch.manual_seed(0)
    model, x = _NormFed().eval(), torch.randn(256, 32)
    q = bitladder.quantize(model, Int(8, act=Act(smoothquant=0.5, outliers=2)), calib=[x])
    assert q.q.act_outliers.tolist() == q.k.act_outliers.tolist()  # one input tensor, one set of channels
    assert 3 in q.q.act_outliers.tolist()  # the LayerNorm's wide channel, even after SmoothQuant
    assert q.fc.qmeta["outliers"] == 2 and "act" in q.fc.qmeta
    plain = bitladder.quantize(model, Int(8, act=Act(smoothquant=0.5)), calib=[x])
    with torch.no_grad():
        ref = model(x)
        assert float((q(x) - ref).norm()) < float((plain(x) - ref).norm())
    with pytest.raises(BitladderError, match="has 16 input channels: Act outliers must be fewer, got 16"):
        bitladder.quantize(model, Int(8, act=Act(outliers=16)), calib=[x])


def test_a_float_layers_smoothing_hook_keeps_no_activation_alive():
    """A smoothed layer left in float keeps its hook: the input and its product go when the caller drops them,
    while the same, unchanged input still gets the one product it got before."""
    import gc
    import weakref

    from bitladder.methods.quantize.activation import _smoothing

    hook = _smoothing(torch.full((4,), 0.5))
    lin = nn.Linear(4, 2)
    lin.register_forward_pre_hook(hook)
    seen = []
    lin.register_forward_pre_hook(lambda _m, args: seen.append(weakref.ref(args[0])))
    x = torch.randn(3, 4)
    lin(x)
    lin(x)
    first = seen[0]()
    assert first is not None and seen[1]() is first  # one product of one input
    x.mul_(2)
    lin(x)
    assert seen[2]() is not first  # changed in place: a new product
    torch.testing.assert_close(seen[2](), x * 0.5)
    source = weakref.ref(x)
    del x, first
    gc.collect()
    assert source() is None and seen[2]() is None
