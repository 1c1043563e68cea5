import torch

from bitladder.zoo import digits


def test_pretrained_accuracy_and_split(digits_spec):
    assert len(digits_spec.targets) == 450
    with torch.inference_mode():
        acc = (digits_spec.model(digits_spec.eval_batches[0]).argmax(1) == digits_spec.targets).float().mean()
    assert float(acc) >= 0.97


def test_cache_is_reused_and_a_damaged_cache_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("BITLADDER_CACHE", str(tmp_path))
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
