"""Block-wise reconstruction (``Int(..., tune=Tune())``): it lowers the blocks' error on calibration data and on
data it never saw, moves codes at most one step and scales within their bound, writes back exactly what it
trained, keeps an untunable block as it was, and its configs and rungs read back."""

import copy

import pytest
import torch
from torch import nn

import bitladder
from bitladder.errors import BitladderError
from bitladder.io.artifact import load, save
from bitladder.methods.quantize.blocktune import _Trainable, tune_model
from bitladder.methods.quantize.configs import Int, config_from_dict
from bitladder.methods.quantize.methods import GPTQ, Act, Tune
from bitladder.methods.quantize.transforms import active
from bitladder.nn.base import QuantModule
from bitladder.pipeline.ladder.rungs import parse_rung


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))))


class Net(nn.Module):
    def __init__(self, d: int = 32, n: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(d) for _ in range(n))

    def forward(self, x):
        for b in self.layers:
            x = b(x)
        return x


def _data(seed: int, batches: int = 6, rows: int = 32, d: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, d, generator=g) for _ in range(batches)]


def _mse(q, m, data) -> float:
    with torch.no_grad():
        return sum(float((q(x) - m(x)).pow(2).mean()) for x in data) / len(data)


def _net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


CFG = Int(2, group=16, symmetric=False, method=GPTQ(), kernel="dequant-fp32")


def test_tuning_lowers_the_error_on_calibration_and_on_unseen_data():
    m, calib, unseen = _net(), _data(1), _data(2)
    plain = bitladder.quantize(m, CFG, calib=calib)
    tuned = bitladder.quantize(m, Int(2, group=16, symmetric=False, method=GPTQ(), kernel="dequant-fp32",
                                      tune=Tune(iters=150)), calib=calib)
    assert _mse(tuned, m, calib) < 0.8 * _mse(plain, m, calib)
    assert _mse(tuned, m, unseen) < 0.9 * _mse(plain, m, unseen)
    assert all(q.qmeta.get("tuned") for q in tuned.modules() if isinstance(q, QuantModule))


def test_codes_move_at_most_one_step_and_scales_stay_in_their_bound():
    m, calib = _net(), _data(1)
    plain = bitladder.quantize(m, CFG, calib=calib)
    tuned = copy.deepcopy(plain)
    cfg = Tune(iters=100, max_scale_change=1.25)
    reports = tune_model(m, tuned, calib, cfg)
    assert [r["block"] for r in reports] == [f"layers.{i}" for i in range(3)]
    assert all(r["kept"] and r["loss_after"] < r["loss_before"] for r in reports)
    moved = 0
    for (name, a), b in zip(plain.named_modules(), tuned.modules()):
        if not isinstance(a, QuantModule):
            continue
        ca, cb = a.qweight.codes(), b.qweight.codes()
        assert int((ca - cb).abs().max()) <= 1, name
        assert int(cb.min()) >= a.qweight.qtype.qmin and int(cb.max()) <= a.qweight.qtype.qmax
        ratio = b.qweight.scale.float() / a.qweight.scale.float()
        assert float(ratio.max()) <= 1.25 * 1.001 and float(ratio.min()) >= 0.8 / 1.001, name
        assert torch.equal(a.qweight.zero_point, b.qweight.zero_point)  # zero points are not trained
        moved += int((ca != cb).sum())
    assert moved > 0


def test_commit_writes_back_exactly_what_was_trained():
    torch.manual_seed(3)
    lin = nn.Linear(40, 12)
    q = bitladder.quantize(lin, Int(3, group=16, symmetric=False, kernel="dequant-fp32"))
    q.set_in_scale(torch.rand(40) + 0.5)  # as AWQ / SmoothQuant leave it
    t = _Trainable(q, bias=True)
    with torch.no_grad():
        t.v.uniform_(-1, 1)
        t.a.uniform_(-0.2, 0.2)
        t.bias.add_(0.1)
    x = torch.randn(7, 40)
    want = t(x).detach()
    t.commit()
    assert torch.allclose(q(x), want, atol=1e-5)


def test_a_block_that_cannot_improve_keeps_its_weights():
    # weights already on the int4 per-channel grid: the quantised model is exact, the loss cannot fall
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    cfg = Int(4, kernel="dequant-fp32")
    grid = bitladder.quantize(m, cfg)
    with torch.no_grad():
        for i in (0, 2):
            m[i].weight.copy_(grid[i].weight())
    calib = [torch.randn(32, 16) for _ in range(3)]
    q = bitladder.quantize(m, cfg)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    (report,) = tune_model(m, q, calib, Tune(iters=20))
    assert report["block"] == "(model)" and report["loss_before"] == 0 and not report["kept"]
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_tuned_model_saves_and_loads(tmp_path):
    m, calib = _net(), _data(1)
    tuned = bitladder.quantize(m, Int(3, group=16, tune=Tune(iters=30), kernel="dequant-fp32"), calib=calib)
    save(tuned, tmp_path / "t.safetensors")
    back = load(tmp_path / "t.safetensors", model=_net())
    x = _data(5)[0]
    assert torch.equal(back(x), tuned(x))


def test_configs_and_rungs():
    cfg = parse_rung("int2-g64-asym-gptq-r64-tune")
    assert cfg.tune == Tune() and cfg.rotate == 64 and cfg.needs_calibration
    assert parse_rung("int4-g64-tune").needs_calibration
    assert config_from_dict(cfg.to_dict()) == cfg
    assert [t.name for t in active(cfg)] == ["hadamard", "tune"]
    with pytest.raises(BitladderError, match="integer rungs only"):
        parse_rung("fp16-tune")
    with pytest.raises(BitladderError, match="weight-only"):
        Int(8, act=Act(), tune=Tune())
    for bad in ({"iters": 0}, {"lr": -1.0}, {"max_scale_change": 0.5}, {"batch": 0}):
        with pytest.raises(BitladderError, match="Tune"):
            Tune(**bad)
    with pytest.raises(BitladderError, match="calibration"):
        bitladder.quantize(_net(), Int(4, tune=Tune()))


def test_digits_cnn_at_two_bits_keeps_its_accuracy(digits_spec):
    from bitladder.pipeline.measure.evaluate import fidelity, outputs

    s = digits_spec
    base = dict(bits=2, group=32, symmetric=False, method=GPTQ())
    plain = bitladder.quantize(s.model, Int(**base), calib=s.calib_batches)
    tuned = bitladder.quantize(s.model, Int(**base, tune=Tune()), calib=s.calib_batches)
    acc = {k: fidelity(s, outputs(m, s.eval_batches), outputs(s.model, s.eval_batches))["fidelity"]
           for k, m in (("plain", plain), ("tuned", tuned))}
    assert acc["tuned"] >= 0.975 and acc["tuned"] >= acc["plain"], acc  # measured 0.980 against GPTQ's 0.971


@pytest.mark.slow
def test_minilm_at_two_bits_on_unseen_text(minilm_spec):
    """Issue 21's bar, W2 g64 >= 0.93 on KJV verses, calibrated on the corpus's other half (about 3 minutes)."""
    from bitladder.pipeline.measure.evaluate import fidelity, outputs
    from bitladder.zoo import minilm, unseen

    if unseen.missing():
        pytest.skip(unseen.missing())
    s = minilm_spec
    start = bitladder.quantize(s.model, Int(8), include=["*embeddings*"])
    calib = minilm.tokenize(unseen.calibration_sentences(512), by_length=True)
    q = bitladder.quantize(start, parse_rung("int2-g64-asym-gptq-r64-tune"), exclude=["*embeddings*"], calib=calib)
    f = fidelity(s, outputs(q, s.unseen_batches), outputs(s.model, s.unseen_batches))
    assert f["fidelity"] >= 0.93, f  # measured 0.936
