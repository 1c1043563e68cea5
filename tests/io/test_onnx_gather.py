"""8-bit embedding tables export as a lookup in the byte codes: only the looked-up rows are
dequantised (zero points too), the whole table never is, and the result equals the torch layer."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import bitladder
from bitladder.io.onnx_export import export_onnx

ort = pytest.importorskip("onnxruntime")


class Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.pos, self.head = nn.Embedding(300, 16), nn.Embedding(8, 16), nn.Linear(16, 4)

    def forward(self, ids):
        return self.head(self.emb(ids) + self.pos(torch.arange(ids.shape[1])))


class Lookup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(300, 16)

    def forward(self, ids):
        return self.emb(ids)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_int8_embeddings_gather_codes_then_dequantise_rows(tmp_path, granularity, symmetric):
    torch.manual_seed(0)
    model = Bag().eval()
    cfg = bitladder.Int(8, granularity=granularity, symmetric=symmetric, kernel="dequant-fp32")
    q = bitladder.quantize(model, cfg)
    ids = torch.randint(0, 300, (5, 8))
    path = export_onnx(q, ids[:2], tmp_path / "emb.onnx")
    graph = onnx.load(str(path)).graph
    tables = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in tables
               and tables[n.input[0]].dtype in (np.int8, np.uint8)]
    assert len(gathers) == 2  # both tables are looked up in their bytes
    dq_inputs = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert not any(tables[t].shape[0] == 300 for t in dq_inputs if t in tables)  # never the whole table
    # basic optimisations only: at ORT_ENABLE_ALL onnxruntime turns DequantizeLinear -> MatMul (the head)
    # into MatMulNBits with int8 activations, which is not what this test is about
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    y = torch.from_numpy(sess.run(None, {"input": ids.numpy()})[0])
    with torch.no_grad():
        assert torch.allclose(y, q(ids), atol=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gathered_rows_are_the_torch_layers_to_the_bit(tmp_path, symmetric):
    torch.manual_seed(1)
    emb = Lookup().eval()
    with torch.no_grad():
        emb.emb.weight[7] += 3.0  # rows of their own range: each row's zero point differs
    q = bitladder.quantize(emb, bitladder.Int(8, symmetric=symmetric))
    ids = torch.randint(0, 300, (4, 9))
    path = export_onnx(q, ids[:2], tmp_path / "lookup.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "DequantizeLinear" not in ops and ("Sub" in ops) == (not symmetric)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": ids.numpy()})[0]
    with torch.no_grad():
        assert torch.equal(torch.from_numpy(y), q(ids))
