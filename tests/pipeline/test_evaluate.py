import torch

from bitladder.pipeline.evaluate import knn_agreement


def test_knn_agreement_identity_and_scrambled():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(50, 16, generator=g)
    assert knn_agreement(e, e) == 1.0
    assert knn_agreement(e, e + 1e-6) == 1.0
    assert knn_agreement(e, torch.randn(50, 16, generator=g)) < 0.5


def test_interleaved_latency_times_every_model_in_every_round():
    import time

    from torch import nn

    from bitladder.pipeline.evaluate import interleaved_latency

    order = []

    class Sleepy(nn.Module):
        def __init__(self, name: str, s: float) -> None:
            super().__init__()
            self.name, self.s = name, s

        def forward(self, x):
            order.append(self.name)
            time.sleep(self.s)
            return x

    lat = interleaved_latency({"fast": Sleepy("fast", 0.001), "slow": Sleepy("slow", 0.02)}, torch.zeros(2), 5,
                              warmup=1)
    assert order == ["fast", "slow"] * 6  # one warm-up round, then 5 rounds, each running both
    assert 0.001 <= lat["fast"] < lat["slow"] and lat["slow"] >= 0.02
