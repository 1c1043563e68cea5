import pytest

from bitladder.pipeline.bench.minilm import round_spread


def test_round_spread_pairs_each_round_with_the_baselines_same_round():
    base = [0.20, 0.30, 0.20, 0.40, 0.20]  # the host slowed down in rounds 1 and 3, for both
    times = [0.10, 0.15, 0.10, 0.20, 0.10]
    assert round_spread(base, times) == [2.0, 2.0]  # every round says 2x: no spread
    lo, hi = round_spread([0.2] * 8, [0.1, 0.2, 0.1, 0.2, 0.1, 0.2, 0.1, 0.2])
    assert lo == pytest.approx(1.0) and hi == pytest.approx(2.0)


@pytest.mark.parametrize("base, times", [(None, [0.1] * 5), ([0.1] * 4, [0.1] * 5), ([0.1] * 3, [0.1] * 3)])
def test_round_spread_needs_the_baseline_for_every_round(base, times):
    assert round_spread(base, times) is None


def test_single_sentence_is_the_first_one_without_its_padding():
    import torch

    from bitladder.pipeline.bench.minilm import single_sentence

    batch = {"input_ids": torch.tensor([[5, 6, 7, 0], [1, 2, 3, 4]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])}
    one = single_sentence(batch)
    assert one["input_ids"].tolist() == [[5, 6, 7]] and one["attention_mask"].tolist() == [[1, 1, 1]]


def test_one_by_one_is_every_sentence_alone_without_its_padding():
    import torch

    from bitladder.pipeline.bench.minilm import one_by_one

    batches = [{"input_ids": torch.tensor([[5, 6, 7, 0], [1, 2, 3, 4]]),
                "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])},
               {"input_ids": torch.tensor([[8, 9]]), "attention_mask": torch.tensor([[1, 1]])}]
    got = one_by_one(batches)
    assert [b["input_ids"].tolist() for b in got] == [[[5, 6, 7]], [[1, 2, 3, 4]], [[8, 9]]]
    assert all(b["attention_mask"].all() for b in got)


def test_the_onednn_reference_is_fp32_minilm_with_every_linear_on_onednn(minilm_spec):
    import torch
    from torch import nn

    from bitladder.kernels import fp32_gemm
    from bitladder.pipeline.bench.minilm import FP32_ONEDNN, variants

    if not fp32_gemm.onednn_installed():
        pytest.skip("this torch has no oneDNN fp32 linear")
    ref = variants(minilm_spec, None)[FP32_ONEDNN]()
    assert not any(type(m) is nn.Linear for m in ref.modules())
    assert any(type(m) is nn.Linear for m in minilm_spec.model.modules())  # the user's model is left alone
    batch = {k: v[:8] for k, v in minilm_spec.eval_batches[0].items()}
    with torch.inference_mode():
        torch.testing.assert_close(ref(**batch), minilm_spec.model(**batch), rtol=1e-5, atol=1e-5)


def test_one_sentence_rows_carry_the_warm_ratio_beside_the_first_call(minilm_spec):
    import dataclasses

    from bitladder.pipeline.bench.minilm import _rows
    from bitladder.pipeline.measure.evaluate import outputs

    few = dataclasses.replace(minilm_spec, eval_batches=[{k: v[:4] for k, v in minilm_spec.eval_batches[0].items()}])
    ref = outputs(minilm_spec.model, few.eval_batches)

    def timed(first: float, warm: float | None) -> dict:
        info = {"outputs_single": ref.numpy(), "onnx_bytes": None}
        g = {"latency_s": first, "rounds_s": [first] * 4, "peak_rss_mb": 1.0, "info": info}
        return g | ({"warm_latency_s": warm, "warm_rounds_s": [warm] * 4} if warm else {})

    got = {"fp32 torch": timed(0.014, 0.010), "rung": timed(0.010, 0.005), "no burst": timed(0.010, None)}
    rows = {r["variant"]: r for r in _rows(few, ref, list(got), got, 1)}
    rung = rows["rung"]
    assert rung["ratio_vs_fp32"] == 1.4 and rung["warm_ratio_vs_fp32"] == 2.0 and rung["warm_latency_ms"] == 5.0
    assert rung["warm_ratio_vs_fp32_iqr"] == [2.0, 2.0] and rung["cos_mean"] == pytest.approx(1.0)
    assert "warm_ratio_vs_fp32" not in rows["no burst"]


def test_rows_set_each_variant_against_the_baseline_of_its_own_timing_group(minilm_spec):
    import dataclasses

    from bitladder.pipeline.bench.isolated import at_batch
    from bitladder.pipeline.bench.minilm import _rows
    from bitladder.pipeline.measure.evaluate import outputs

    few = dataclasses.replace(minilm_spec, eval_batches=[{k: v[:4] for k, v in minilm_spec.eval_batches[0].items()}])
    ref = outputs(minilm_spec.model, few.eval_batches)
    info = {"outputs": ref.numpy(), "onnx_bytes": None}

    def figures(s: float) -> dict:
        return {"latency_s": s, "rounds_s": [s] * 4}

    fp32 = {**figures(0.020), "peak_rss_mb": 1.0, "info": info, "by_batch": [figures(0.020)]}
    rung = {**figures(0.010), "peak_rss_mb": 1.0, "info": info, "by_batch": [figures(0.010)], "group": 1,
            "paired": {"fp32 torch": {**figures(0.030), "by_batch": [figures(0.030)]}}}
    rows = {r["variant"]: r for r in _rows(few, ref, ["fp32 torch", "rung"],
                                           at_batch({"fp32 torch": fp32, "rung": rung}, 0), 32)}
    assert rows["rung"]["ratio_vs_fp32"] == 3.0 and rows["rung"]["fp32_latency_ms"] == 30.0  # its group's fp32
    assert rows["rung"]["timing_group"] == 1 and rows["rung"]["ratio_vs_fp32_iqr"] == [3.0, 3.0]
    assert rows["fp32 torch"]["ratio_vs_fp32"] == 1.0 and "timing_group" not in rows["fp32 torch"]


def test_without_avx2_the_torch_ao_worker_says_why_instead_of_dying(monkeypatch):
    from bitladder.errors import BitladderError
    from bitladder.kernels import cpu
    from bitladder.pipeline.bench import minilm, peers

    nehalem = cpu.Cpu("Nehalem", frozenset(), frozenset(), vendor="GenuineIntel")
    monkeypatch.setattr(peers, "current", lambda env=None: nehalem)
    with pytest.raises(BitladderError, match="AVX2"):  # before torch's dynamic Linear is ever built or called
        minilm._torch_ao(None)
