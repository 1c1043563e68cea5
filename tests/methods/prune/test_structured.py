import pytest
import torch
from torch import nn

from bitladder import BitladderError
from bitladder.methods.prune.structured import ChannelPrune, prune_channels


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.fc = nn.Conv2d(8, 16, 3, padding=1), nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) + h


def test_physical_removal_keeps_kept_channels_exact():
    torch.manual_seed(0)
    m = CNN().eval()
    with torch.no_grad():  # channels 0..3 of c2 carry no signal: pruning them must not change the output
        m.c2.weight[:8] = 0
        m.c2.bias[:8] = -1.0  # ReLU kills them
    x = torch.randn(4, 1, 8, 8)
    p, rep = prune_channels(m, ChannelPrune(ratio=0.5), x[:1])
    assert rep["pruned"]["c2"] == (16, 8) and rep["pruned"]["c1"] == (8, 4)
    assert p.c2.weight.shape == (8, 4, 3, 3) and p.bn.num_features == 4 and p.fc.weight.shape == (5, 8 * 16)
    assert "c1" in rep["pruned"] and rep["skipped"] == {"fc": "its output is the model's output"}
    ref = m(x)
    q, _ = prune_channels(m, ChannelPrune(ratio=0.0), x[:1])
    assert torch.allclose(q(x), ref, atol=1e-6)
    # only c1's pruning changes the function; c2's dead channels went without a trace
    m2, _ = prune_channels(m, ChannelPrune(ratio=0.5), x[:1])
    assert sum(t.numel() for t in m2.parameters()) < 0.4 * sum(t.numel() for t in m.parameters())


def test_residual_is_named_and_skipped():
    p, rep = prune_channels(Residual(), ChannelPrune(0.5), torch.randn(2, 8))
    assert "a" in rep["skipped"] and "add" in rep["skipped"]["a"]
    assert p.a.out_features == 8


def test_untraceable_model_is_one_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x):
            return self.l(x) if x.sum() > 0 else x

    with pytest.raises(BitladderError, match="cannot trace the model with torch.fx"):
        prune_channels(Branchy(), ChannelPrune(0.5), torch.randn(2, 4))


def test_digits_half_the_channels_recovers(digits_spec):
    from bitladder.methods.prune.finetune import finetune_classifier
    from bitladder.pipeline.measure.evaluate import fidelity, outputs
    from bitladder.zoo import digits

    d = digits.load_data()
    ref = outputs(digits_spec.model, digits_spec.eval_batches)
    base = fidelity(digits_spec, ref, ref)["fidelity"]
    p, rep = prune_channels(digits_spec.model, ChannelPrune(0.5), digits_spec.eval_batches[0][:2])
    assert len(rep["pruned"]) == 4
    finetune_classifier(p, d["x_train"], d["y_train"], epochs=20)
    assert 100 * (base - fidelity(digits_spec, outputs(p, digits_spec.eval_batches), ref)["fidelity"]) <= 1.0
