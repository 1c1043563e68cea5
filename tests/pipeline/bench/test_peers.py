"""The MiniLM bench peers (OpenVINO, OpenVINO + NNCF, torchao): each builds and matches fp32 embeddings."""

import warnings

import pytest
import torch
from torch import nn

from bitladder.pipeline.bench import peers as bench_peers

pytestmark = pytest.mark.slow  # NNCF calibrates for ~1 min; torchao's eager int8 matmul is slow on CPU

ROWS = 16  # sentences per eval batch checked (torchao's int8 matmul takes ~0.5 s a sentence on AVX2)

#: peer -> (package to import, mean cosine floor to fp32)
PEERS = {
    "openvino_fp32": ("openvino", 0.9999),
    "openvino_nncf_int8": ("nncf", 0.99),
    "torchao_int8_dynamic": ("torchao", 0.99),
    "torchao_int4_weight_only": ("torchao", 0.93),  # RTN int4 g64, measured 0.957 on all 256 sentences
}


def _build(name, spec, folder):
    fn = getattr(bench_peers, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(spec, folder) if name.startswith("openvino") else fn(spec)


@pytest.mark.parametrize("name", list(PEERS))
def test_peer_matches_fp32(name, minilm_spec, tmp_path):
    package, floor = PEERS[name]
    pytest.importorskip(package)
    spec = minilm_spec
    peer = _build(name, spec, tmp_path)
    batches = [{k: v[:ROWS] for k, v in b.items()} for b in spec.eval_batches[:2]]
    n = int(batches[0]["attention_mask"][0].sum())  # one sentence, its padding cut: another shape
    batches.append({k: v[:1, :n] for k, v in batches[0].items()})
    with torch.inference_mode():
        ref = [spec.model(**b) for b in batches]
        got = [peer(**b) for b in batches]
    for r, g in zip(ref, got):
        assert isinstance(g, torch.Tensor) and g.dtype == torch.float32
        assert g.shape == r.shape
    cos = nn.functional.cosine_similarity(torch.cat(got), torch.cat(ref), dim=-1)
    assert cos.mean().item() >= floor, f"{name}: mean cosine {cos.mean().item():.5f} < {floor}"
    if name == "openvino_nncf_int8":  # without fused subgraphs: NNCF's IR reused, the same numbers
        plain = bench_peers.openvino_nncf_int8(spec, tmp_path, snippets=False)
        with torch.inference_mode():
            again = torch.cat([plain(**b) for b in batches])
        assert len(list(tmp_path.glob("minilm-openvino-nncf-int8*.xml"))) == 1
        assert nn.functional.cosine_similarity(again, torch.cat(got), dim=-1).min().item() > 0.9999
