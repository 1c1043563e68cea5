"""The warnings engine: each check speaks when its fact is bad, stays silent when it is fine or unmeasured."""

import torch

from bitladder.pipeline.measure.warn import CHECKS, MIN_SAMPLES, Facts, check, float_bytes, sample_count, warnings_for


def test_a_clean_result_and_an_unmeasured_one_have_no_warnings():
    assert warnings_for(Facts()) == []
    assert warnings_for(Facts(latency_ratio=1.3, bytes_on_disk=100, fp32_bytes=400, above=("int8", 200),
                              kernels={"a": "c-lowbit-a8"}, layers={"a": {"latency_ratio": 1.2, "clipped": 0,
                                                                           "numel": 10, "format": "int4"}},
                              samples=MIN_SAMPLES)) == []


def test_each_bad_fact_is_one_sentence():
    got = warnings_for(Facts(
        latency_ratio=0.8, bytes_on_disk=500, fp32_bytes=400, above=("int4", 300),
        kernels={"a": "dequant-fp32", "b": "ort-nbits"},
        layers={"a": {"latency_ratio": 0.5, "kernel": "dequant-fp32", "clipped": 50, "numel": 1000, "format": "int4"},
                "b": {"latency_ratio": 1.5, "kernel": "ort-nbits", "clipped": 9, "numel": 10, "format": "binary"}},
        kept={"c": "unsupported layer", "d": "unsupported layer"}, samples=64))
    text = "\n".join(got)
    assert "slower than fp32 (latency ratio 0.80); compute paths: dequant-fp32, ort-nbits" in text
    assert "1 of 2 layers slower than fp32: a (dequant-fp32, 0.50x)" in text
    assert "no size gain: 500 bytes against fp32's 400" in text
    assert "no smaller than the rung above (int4: 300 bytes, this one 500)" in text
    assert "1 of 2 quantised layers on a fallback kernel (dequantised every call): a" in text
    assert "kept in float: 2 x unsupported layer" in text
    assert "a: 50 values (5.00 %) clipped" in text and "b:" not in text  # binary clips by design
    assert "fidelity measured on 64 inputs" in text
    assert len(got) == 8


def test_a_slow_layer_says_how_many_microseconds_a_call_it_loses_where_timed():
    layer = {"latency_ratio": 0.69, "kernel": "fp32", "latency_us": 31.3, "fp32_latency_us": 22.9}
    text = "\n".join(warnings_for(Facts(layers={"classifier.3": layer, "fc": {**layer, "latency_ratio": 0.9,
                                                                               "latency_us": 2000.0}})))
    assert ("2 of 2 layers slower than fp32: classifier.3 (fp32, 0.69x, +8 us a call), "
            "fc (fp32, 0.90x, +1977 us a call)") in text


def test_kernels_auto_chose_are_no_fallback():
    """A weight dequantised by a kernel auto picked for being fastest (large batches, convolutions, embedding
    rows) is a choice, not a missing kernel; the layer's own dequant path, with or without an activation
    format, is."""
    kernels = {"fc": "numba-dequant-int4", "conv": "c-dequant-conv", "emb": "gather-dequant-fp32",
               "head": "dequant-fp32", "static": "dequant-fp32+act-uint8-fakequant"}
    text = "\n".join(warnings_for(Facts(kernels=kernels)))
    assert "2 of 5 quantised layers on a fallback kernel (dequantised every call): head, static" in text


def test_a_registered_check_runs_for_every_command():
    @check
    def huge(f: Facts) -> list[str]:
        return ["huge"] if (f.bytes_on_disk or 0) > 10**12 else []

    try:
        assert warnings_for(Facts(bytes_on_disk=10**13)) == ["huge"]
    finally:
        CHECKS.remove(huge)


def test_sample_count_and_float_bytes():
    assert sample_count([torch.zeros(3, 5), torch.zeros(4, 5)]) == 7
    assert sample_count([{"input_ids": torch.zeros(8, 12, dtype=torch.long)}]) == 8
    assert float_bytes(torch.nn.Linear(10, 4)) == (40 + 4) * 4


def test_a_slow_layer_on_a_kernel_with_advice_gets_its_sentence_once():
    """The static C kernel ties fp32 at best without VNNI: a slow result on it says so and names the rung to take;
    a fast one, or a slow one on other kernels, does not."""
    from bitladder.kernels.c_static import CStaticKernel

    static = {"latency_ratio": 0.9, "kernel": CStaticKernel.name}
    slow = warnings_for(Facts(latency_ratio=0.9, kernels={"a": CStaticKernel.name, "b": CStaticKernel.name},
                              layers={"a": static, "b": dict(static)}))
    said = [w for w in slow if w.startswith(f"{CStaticKernel.name}: ")]
    assert len(said) == 1 and "int7-a8" in said[0] and said[0].endswith(CStaticKernel.advice)
    # only a layer slow: still said; the model and its layers fast, or slow elsewhere: not
    assert any(w.startswith(CStaticKernel.name) for w in warnings_for(Facts(layers={"a": static})))
    fast = {"latency_ratio": 1.2, "kernel": CStaticKernel.name}
    assert not any(CStaticKernel.name in w for w in warnings_for(Facts(latency_ratio=1.1, kernels={"a": fast["kernel"]},
                                                                       layers={"a": fast})))
    assert not any("int7-a8" in w for w in warnings_for(Facts(latency_ratio=0.8, kernels={"a": "dequant-fp32"})))


def test_a_slow_weight_only_convolution_says_it_computes_in_float():
    from bitladder.kernels.dequant_conv import DequantConv2d

    conv = {"latency_ratio": 0.8, "kernel": DequantConv2d.name}
    said = [w for w in warnings_for(Facts(layers={"features.0": conv})) if w.startswith(f"{DequantConv2d.name}: ")]
    assert len(said) == 1 and "-a8" in said[0] and "tie fp32" in said[0]
