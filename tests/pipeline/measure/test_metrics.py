import math

import pytest
import torch

from bitladder.pipeline.measure.metrics import IGNORE, METRICS, perplexity
from bitladder.zoo.spec import METRICS as SPEC_METRICS


def test_every_spec_metric_has_a_function_returning_the_shared_keys():
    assert set(METRICS) == set(SPEC_METRICS)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g)
    args = {"accuracy": (logits[:, 0], logits[:, 0], torch.tensor([0, 1, 2])),
            "cosine": (logits[:, 0], logits[:, 0], None),
            "perplexity": (logits, logits, torch.randint(0, 7, (3, 5), generator=g))}
    for name, fn in METRICS.items():
        r = fn(*args[name])
        assert {"fidelity", "cos_min", "knn10"} <= set(r), name
        assert r["fidelity"] == pytest.approx(1.0) or name == "accuracy"


def test_perplexity_is_exp_of_next_token_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 11, generator=g)
    ids = torch.randint(0, 11, (2, 6), generator=g)
    nll = -torch.log_softmax(logits.double(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).mean()
    r = perplexity(logits, logits, ids)
    assert r["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-9)
    assert r["fp32_perplexity"] == r["perplexity"] and r["fidelity"] == 1.0
    uniform = perplexity(torch.zeros(2, 6, 11), logits, ids)
    assert uniform["perplexity"] == pytest.approx(11.0)  # no information: the vocabulary size


def test_agreement_counts_top1_changes_and_skips_ignored_targets():
    ref = torch.zeros(1, 5, 3)
    ref[0, :, 0] = 1.0  # fp32 predicts token 0 everywhere
    out = ref.clone()
    out[0, 1, 2] = 5.0  # one of the four scored positions now predicts token 2
    ids = torch.tensor([[0, 0, 0, 0, 0]])
    assert perplexity(out, ref, ids)["fidelity"] == pytest.approx(0.75)
    ids[0, 2] = IGNORE  # position 1 predicts target 2: padding, not scored
    r = perplexity(out, ref, ids)
    assert r["fidelity"] == 1.0 and math.isfinite(r["perplexity"])
