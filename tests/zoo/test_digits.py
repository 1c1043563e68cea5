import torch
from safetensors.torch import load_file

from bitladder.zoo import digits
from tests.zoo.pinned import retrain


def test_pretrained_accuracy_and_split(digits_spec):
    assert len(digits_spec.targets) == 450
    with torch.inference_mode():
        acc = (digits_spec.model(digits_spec.eval_batches[0]).argmax(1) == digits_spec.targets).float().mean()
    assert float(acc) >= 0.97


def test_the_shipped_weights_load_without_training(monkeypatch):
    monkeypatch.setattr(digits, "train", lambda data: (_ for _ in ()).throw(AssertionError("must not train")))
    assert digits.SHIPPED.exists()
    want = load_file(str(digits.SHIPPED))
    got = digits.pretrained().state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_training_under_the_pinned_dispatch_reproduces_the_shipped_model(tmp_path, digits_spec):
    """A few seconds: train() in a fresh process under PINNED lands beside the shipped weights (bit for bit on
    the AMD hosts that trained it) and predicts as they do."""
    got, _ = retrain(digits.SHIPPED, "digits.train(digits.load_data())", "from bitladder.zoo import digits",
                     tmp_path / "trained.safetensors", 600,
                     rel_tol=0.1)  # measured 0.012 on the Intel Xeon; another seed lands near 1.4
    model = digits.DigitsCNN()
    model.load_state_dict(got)
    x, y = digits_spec.eval_batches[0], digits_spec.targets
    with torch.inference_mode():
        mine, theirs = model.eval()(x).argmax(1), digits_spec.model(x).argmax(1)
    assert float((mine == theirs).float().mean()) >= 0.99  # measured 1.0 on the Intel Xeon
    assert abs(float((mine == y).float().mean()) - float((theirs == y).float().mean())) <= 0.01


def test_without_the_shipped_file_the_cache_is_reused_and_a_damaged_cache_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("BITLADDER_CACHE", str(tmp_path))
    monkeypatch.setattr(digits, "SHIPPED", tmp_path / "absent.safetensors")
    monkeypatch.setitem(digits.TRAIN, "epochs", 1)  # behaviour of the cache, not accuracy
    calls = []
    real = digits.train
    monkeypatch.setattr(digits, "train", lambda data: calls.append(1) or real(data))
    data = digits.load_data()
    a = digits.pretrained(data)
    b = digits.pretrained(data)
    assert len(calls) == 1
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    cached = next(tmp_path.glob("digits-cnn-*.safetensors"))
    cached.write_bytes(b"garbage")
    digits.pretrained(data)
    assert len(calls) == 2
