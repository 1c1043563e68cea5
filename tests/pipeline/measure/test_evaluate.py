import pytest
import torch

from bitladder.pipeline.measure.evaluate import knn_agreement


def test_knn_agreement_identity_and_scrambled():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(50, 16, generator=g)
    assert knn_agreement(e, e) == 1.0
    assert knn_agreement(e, e + 1e-6) == 1.0
    assert knn_agreement(e, torch.randn(50, 16, generator=g)) < 0.5


def test_layer_latency_times_each_quantised_layer_on_its_own_input():
    import time

    from torch import nn

    import bitladder
    from bitladder import Float
    from bitladder.pipeline.measure.evaluate import _calls_per_sample, layer_latency

    torch.manual_seed(0)
    # small layers: the gap below must dwarf a layer's own time on any CPU (512 wide at 256 rows took tens of ms
    # on an emulated one, and the 20 ms no longer decided the ratio)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).eval()
    q = bitladder.quantize(model, Float("fp32"))  # the same arithmetic: only the wrapper differs
    # layer "2" is made 20 ms slower than its float twin: a wall-clock gap no host load can close, so the
    # verdict does not depend on how busy the machine is (a ratio near 1 for layer "0" would)
    q[2].register_forward_hook(lambda *_: time.sleep(0.02))
    timings = layer_latency(model, q, torch.randn(32, 64), repeats=5)
    assert set(timings) == {"0", "2"}
    ratios = {n: t["latency_ratio"] for n, t in timings.items()}
    assert ratios["2"] < 0.5 and ratios["0"] > 2 * ratios["2"], ratios
    slow = timings["2"]  # the per-call times behind the ratio: the sleep is in the quantised layer's
    assert slow["latency_us"] > 2e4 and slow["latency_us"] - slow["fp32_latency_us"] > 1.5e4, slow
    assert slow["fp32_latency_us"] / slow["latency_us"] == pytest.approx(slow["latency_ratio"], rel=1e-3)
    assert _calls_per_sample(lambda: None, 1e-3, cap=50) == 50  # a fast call is repeated, up to the cap
    assert _calls_per_sample(lambda: time.sleep(2e-3), 1e-3) == 1


def test_paired_latency_times_both_models_without_autograd():
    """The float model's parameters require grad: timed with autograd on, it recorded a graph the quantised
    model (buffers) did not, and paid for it."""
    from torch import nn

    from bitladder.pipeline.measure.evaluate import paired_latency

    seen = []

    class Spy(nn.Linear):
        def forward(self, x):
            seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
            return super().forward(x)

    ref, model = Spy(4, 4), Spy(4, 4).requires_grad_(False)
    fp32_s, model_s = paired_latency(ref, model, torch.randn(2, 4), repeats=3, warmup=1)
    assert fp32_s > 0 and model_s > 0 and len(seen) == 8
    assert all(inference and not grad for inference, grad in seen)
