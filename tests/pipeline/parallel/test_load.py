"""Stages of tinylm built from its artifact: each reads only its own tensors, holds the artifact's codes bit for
bit, and the stages chained compute exactly what the whole model computes."""

import pytest
import torch

import bitladder
from bitladder import Int
from bitladder.errors import BitladderError
from bitladder.pipeline.parallel import load as load_mod
from bitladder.pipeline.parallel.load import load_stage, plan
from bitladder.zoo import causal_lm


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinylm")
    fp32 = bitladder.save(causal_lm.pretrained(), d / "fp32.safetensors", source="tinylm")
    q = bitladder.quantize(causal_lm.pretrained(), Int(bits=4, group=32))
    return {"fp32": fp32, "int4": bitladder.save(q, d / "int4.safetensors", source="tinylm")}


class _Reads:
    """safe_open that records every tensor name read."""

    def __init__(self, real):
        self.real, self.names = real, []

    def __call__(self, *args, **kwargs):
        outer = self

        class Handle:
            def __enter__(self):
                self.f = outer.real(*args, **kwargs).__enter__()
                return self

            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

            def keys(self):
                return self.f.keys()

            def get_tensor(self, name):
                outer.names.append(name)
                return self.f.get_tensor(name)

        return Handle()


@pytest.mark.parametrize("kind", ["fp32", "int4"])
def test_stages_read_disjoint_parts_and_chain_to_the_whole_model(artifacts, kind, monkeypatch):
    path = artifacts[kind]
    whole = bitladder.load(path)
    x = causal_lm.blocks(causal_lm.encode(causal_lm.corpus.eval_sentences(8)), batch=3, context=64)[0]
    with torch.no_grad():
        ref = whole(x)
    _, info = bitladder.io.artifact.read_header(path)
    for n in (1, 2, 4):
        seen, h = [], x
        for i in range(n):
            reads = _Reads(load_mod.safe_open)
            monkeypatch.setattr(load_mod, "safe_open", reads)
            stage, p = load_stage(path, i, n)
            assert len(reads.names) == len(set(reads.names))  # nothing read twice
            assert sum(info[k]["nbytes"] for k in reads.names) == p.nbytes
            seen.append(set(reads.names))
            with torch.no_grad():
                h = stage(h)
        assert set().union(*seen) == set(info) and sum(map(len, seen)) == len(info)  # a partition of the file
        assert torch.equal(h, ref), n  # bit-identical: the same operations on the same tensors


def test_quantised_codes_are_the_artifacts(artifacts):
    whole = bitladder.load(artifacts["int4"]).state_dict()
    stage, p = load_stage(artifacts["int4"], 1, 2)
    assert (p.start, p.stop, p.units) == (2, 4, 4)  # layer 1, then norm + head
    packed = dict(stage.state_dict())
    assert torch.equal(packed["lm_head.weight_packed"], whole["lm.lm_head.weight_packed"])
    assert torch.equal(packed["layers.0.mlp.up_proj.weight_packed"], whole["lm.model.layers.1.mlp.up_proj.weight_packed"])


def test_split_follows_stored_bytes(artifacts):
    for kind in ("fp32", "int4"):
        stages = plan(artifacts[kind], 2)
        assert [(s.start, s.stop) for s in stages] == [(0, 2), (2, 4)]
        total = sum(v["nbytes"] for v in bitladder.io.artifact.read_header(artifacts[kind])[1].values())
        assert sum(s.nbytes for s in stages) == total
    assert plan(artifacts["int4"], 2)[0].nbytes * 5 < plan(artifacts["fp32"], 2)[0].nbytes  # packed, not float


def test_unsplittable_requests_give_one_clear_error(artifacts, tmp_path):
    with pytest.raises(BitladderError, match="a model of 4 pipeline units .* cannot be split into 5 stages; "
                                             "accepted: 1 to 4"):
        load_stage(artifacts["fp32"], 0, 5)
    digits = bitladder.save(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)), tmp_path / "s.safetensors")
    with pytest.raises(BitladderError, match="a Sequential model cannot be split into pipeline stages"):
        load_stage(digits, 0, 2, factory=lambda: torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))
    q = bitladder.quantize(causal_lm.pretrained(), Int(bits=4, group=32, rotate=32))
    rotated = bitladder.save(q, tmp_path / "rot.safetensors", source="tinylm")
    with pytest.raises(BitladderError, match="was reshaped .* which pipelining does not support yet"):
        load_stage(rotated, 0, 2)


def test_an_artifact_of_another_shape_is_refused(artifacts):
    from transformers import LlamaConfig, LlamaForCausalLM

    def wider():
        cfg = causal_lm.build().lm.config
        big = LlamaConfig(**{**cfg.to_dict(), "intermediate_size": 512})
        return causal_lm.CausalLM(LlamaForCausalLM(big))

    with pytest.raises(BitladderError, match="artifact does not match the model: .*size mismatch"):
        load_stage(artifacts["fp32"], 0, 2, factory=wider)
