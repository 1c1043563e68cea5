import torch

from bitladder.pipeline.evaluate import knn_agreement


def test_knn_agreement_identity_and_scrambled():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(50, 16, generator=g)
    assert knn_agreement(e, e) == 1.0
    assert knn_agreement(e, e + 1e-6) == 1.0
    assert knn_agreement(e, torch.randn(50, 16, generator=g)) < 0.5
