"""The tinylm bench suite: one real run of two variants in their own processes gives a row per batch size with
next-token agreement and perplexity beside the ratio; a missing peer is a row with the reason."""

import math

from bitladder.pipeline.bench import tinylm


def test_rows_carry_agreement_perplexity_and_a_ratio_per_batch():
    rows = tinylm.tinylm_rows(repeats=2, only=["W8 weight-only"])
    assert [(r["batch"], r["variant"]) for r in rows] == [
        (b, v) for b in tinylm.BATCHES for v in ("fp32 torch", "bitladder W8 weight-only")]
    fp32 = [r for r in rows if r["variant"] == "fp32 torch"]
    w8 = [r for r in rows if r["variant"] != "fp32 torch"]
    assert all(r["agreement"] == 1.0 and r["ratio_vs_fp32"] == 1.0 for r in fp32)
    for r in w8:
        assert 0.97 < r["agreement"] < 1.0  # int8 moves a few next-token choices, not many
        assert math.isclose(r["fp32_perplexity"], fp32[0]["perplexity"], rel_tol=1e-9)
        assert abs(r["perplexity"] / r["fp32_perplexity"] - 1) < 0.005  # issue 18: int8 within 0.5 %
        assert r["ratio_vs_fp32"] > 0 and r["latency_ms"] > 0


def test_every_variant_is_named_once_with_the_peers_beside_bitladder():
    names = list(tinylm.variants(type("S", (), {"calib_batches": [], "model": None})()))
    assert names[0] == "fp32 torch" and len(set(names)) == len(names)
    assert {"optimum-quanto W8", "optimum-quanto W4", "hqq W4 g64"} <= set(names)
