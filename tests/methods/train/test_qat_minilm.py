"""BitNet b1.58 QAT on the real MiniLM blocks (slow): a short distillation improves fidelity, and the packed
model (ternary storage, per-token int8 activations) computes what the fake-quantised one trained."""

import pytest
import torch

from bitladder.methods.train.qat import QAT, convert, prepare_qat
from bitladder.methods.train.trainer import Train, fit
from bitladder.pipeline.measure.evaluate import fidelity, outputs


@pytest.mark.slow
def test_minilm_bitnet_distillation_improves_and_converts_exactly(minilm_spec):
    spec = minilm_spec
    evals = spec.eval_batches[:2]
    ref = outputs(spec.model, evals)
    student = prepare_qat(spec.model, QAT(bits="ternary", bitnet=True), include=["encoder.encoder.layer.*"])
    before = fidelity(spec, outputs(student.eval(), evals), ref)["fidelity"]
    fit(student, spec.train_batches[:6], None, Train(epochs=2, lr=3e-4, hint=1.0,
                                                     hint_layers=["encoder.encoder.layer.[0-9]"]),
        teacher=spec.model, metric="cosine")
    packed = convert(student)
    out = outputs(packed, evals)
    assert fidelity(spec, out, ref)["fidelity"] > before + 0.05
    assert torch.allclose(out, outputs(student, evals), atol=1e-5)
    kinds = {(m.qweight.qtype.name, m.qmeta["act"]["observer"]) for m in packed.modules() if hasattr(m, "qweight")}
    assert kinds == {("ternary", "per-token-absmax")}
