import pytest
import torch

from bitladder import BitladderError
from bitladder.zoo.registry import resolve


def test_factory_with_targets_scores_accuracy():
    spec = resolve("tests.zoo.user_models:classifier")
    assert spec.metric == "accuracy" and spec.targets is not None


def test_factory_without_targets_scores_cosine():
    spec = resolve("tests.zoo.user_models:regressor")
    assert spec.metric == "cosine"
    assert isinstance(spec.eval_batches[0], torch.Tensor)


@pytest.mark.parametrize("name,msg", [
    ("resnet50", "unknown model"), ("tests.zoo.user_models:nothing", "cannot load factory"),
    ("tests.zoo.user_models:bad_return", "returned int; accepted: a ModelSpec"), ("a b:c", "unknown model"),
])
def test_bad_model_names(name, msg):
    with pytest.raises(BitladderError, match=msg):
        resolve(name)
