"""``torch.compile`` of a bitladder-quantised model: it compiles, and gives the outputs of the eager model."""

import pytest
import torch
from torch import nn

import bitladder
from bitladder import Int
from bitladder.methods.quantize.methods import Act


class Small(nn.Module):
    """An embedding, a convolution and Linear layers: every built-in quantised layer in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 32)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(32 + 8 * 16, 64), nn.Linear(64, 10)

    def forward(self, idx: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.emb(idx).mean(1), torch.relu(self.conv(img)).flatten(1)], 1)
        return self.fc2(torch.nn.functional.gelu(self.fc1(h)))


CONFIGS = {"w8": Int(8), "w4-g32": Int(4, group=32), "w2-g32": Int(2, group=32), "binary": bitladder.Binary(),
           "w8a8-token": Int(8, act=Act(dynamic="token", smoothquant=0.5)),
           "w8a8-static": Int(8, act=Act(smoothquant=0.5)), "w7a8-static-outliers": Int(7, act=Act(outliers=4))}


def _inputs(rows: int) -> dict[str, torch.Tensor]:
    return {"idx": torch.randint(0, 40, (rows, 5)), "img": torch.randn(rows, 1, 4, 4)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("mode", ["inference", "no_grad"])
def test_a_quantised_model_compiles_to_its_eager_outputs(name, mode):
    torch.manual_seed(0)
    model = Small().eval()
    q = bitladder.quantize(model, CONFIGS[name], calib=[_inputs(32)])
    compiled = torch.compile(q, backend="eager")  # Dynamo's capture and guards, without a compiler's build time
    ctx = torch.inference_mode if mode == "inference" else torch.no_grad
    with ctx():
        for rows in (1, 6, 6):  # the second call of a shape runs what the first compiled
            x = _inputs(rows)
            assert torch.equal(compiled(**x), q(**x))
    kernels = {m.kernel for m in q.modules() if isinstance(m, bitladder.nn.base.QuantModule)}
    assert kernels - {"dequant-fp32"}, "the quantised layers ran their kernels under compile as in eager mode"


def test_a_rotated_per_token_bert_without_padding_compiles_to_its_eager_outputs():
    from transformers import BertConfig, BertModel

    from bitladder.nn.unpad import without_padding

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=40, attn_implementation="sdpa")
    ids = torch.randint(1, 64, (3, 9))
    mask = (torch.arange(9)[None, :] < torch.tensor([9, 4, 6])[:, None]).long()
    calib = [{"input_ids": ids, "attention_mask": mask}]
    q = without_padding(bitladder.quantize(BertModel(cfg).eval(), Int(8, act=Act(dynamic="token"), rotate=32),
                                           calib=calib))
    compiled = torch.compile(q, backend="eager")
    with torch.inference_mode():
        for _ in range(2):
            want = q(input_ids=ids * mask, attention_mask=mask).last_hidden_state
            assert torch.equal(compiled(input_ids=ids * mask, attention_mask=mask).last_hidden_state, want)
