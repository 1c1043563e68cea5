"""``bitladder export --to``: each target from the command line on the built-in causal LM, read back by its
own runtime's reader; options and targets that do not apply are one-line errors with nothing written."""

import pytest
import torch

import bitladder
from bitladder import Int
from bitladder.zoo import causal_lm
from tests.cli.test_cli import cli, one_line_error
from tests.io.exact import exact


@pytest.fixture(scope="module")
def tinylm_int4(tmp_path_factory):
    path = tmp_path_factory.mktemp("art") / "tinylm-int4.safetensors"
    q = bitladder.quantize(causal_lm.pretrained(), Int(bits=4, group=32), exclude=["lm.model.embed_tokens"])
    bitladder.save(q, path, source="tinylm")
    return path, q


def test_gguf_from_the_command_line_reads_back(tmp_path, tinylm_int4):
    gguf = pytest.importorskip("gguf", reason="the gguf package (deploy extra) is not installed")
    art, q = tinylm_int4
    res = cli("export", str(art), "--to", "gguf", "--out", str(tmp_path / "m.gguf"))
    assert res.returncode == 0, res.stderr
    assert "m.gguf" in res.stdout
    tensors = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    down = tensors["blk.1.ffn_down.weight"]
    back = gguf.quants.dequantize(down.data, down.tensor_type).reshape(q.lm.model.layers[1].mlp.down_proj.qweight.shape)
    assert down.tensor_type.name == "Q4_0"
    assert torch.equal(torch.from_numpy(back), q.lm.model.layers[1].mlp.down_proj.qweight.dequantize())


def test_hf_folder_from_the_command_line_loads_in_transformers(tmp_path, tinylm_int4):
    pytest.importorskip("compressed_tensors", reason="compressed-tensors (deploy extra) is not installed")
    from transformers import AutoModelForCausalLM

    art, q = tinylm_int4
    res = cli("export", str(art), "--to", "hf", "--out", str(tmp_path / "ckpt"))
    assert res.returncode == 0, res.stderr
    x = causal_lm.spec().eval_batches[0][:2]
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")(input_ids=x).logits
        assert torch.allclose(got, exact(q)(x), atol=1e-5, rtol=1e-5)  # the folder holds dequantised weights


def test_wrong_target_and_onnx_only_options_are_one_line_errors(tmp_path, tinylm_int4):
    art, _ = tinylm_int4
    one_line_error(cli("export", str(art), "--to", "tflite", "--out", str(tmp_path / "m")),
                   "unknown export target 'tflite'", "onnx, gguf, hf, executorch")
    one_line_error(cli("export", str(art), "--to", "gguf", "--opset", "17", "--out", str(tmp_path / "m.gguf")),
                   "opset", "--to onnx only")
    one_line_error(cli("export", str(art), "--to", "gguf", "--remove-padding", "--out", str(tmp_path / "m.gguf")),
                   "remove_padding", "--to onnx only")
    one_line_error(cli("export", str(art), "--to", "gguf", "--out", str(tmp_path / "nowhere" / "m.gguf")),
                   "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_target_gguf_cannot_hold_is_refused_on_the_command_line(tmp_path, digits_spec):
    art = tmp_path / "digits.safetensors"
    bitladder.save(bitladder.quantize(digits_spec.model, Int(bits=4, group=32)), art, source="digits")
    one_line_error(cli("export", str(art), "--to", "gguf", "--out", str(tmp_path / "d.gguf")), "Llama-architecture")
    assert not (tmp_path / "d.gguf").exists()


def test_a_model_from_a_local_folder_exports_from_the_command_line(tmp_path):
    """--model PATH end to end: a Llama folder quantised, saved with its hf: source, exported by the CLI to
    GGUF and a compressed-tensors folder, each read back to the artifact's numbers."""
    gguf = pytest.importorskip("gguf", reason="the gguf package (deploy extra) is not installed")
    pytest.importorskip("compressed_tensors", reason="compressed-tensors (deploy extra) is not installed")
    from transformers import AutoModelForCausalLM

    from bitladder.zoo.registry import resolve
    from tests.zoo.llama_folders import llama_folder

    spec = resolve(str(llama_folder(tmp_path / "llama", layers=2, vocab=256)))
    q = bitladder.quantize(spec.fresh_model(), Int(bits=4, group=32), exclude=["lm.model.embed_tokens"])
    bitladder.save(q, tmp_path / "q.safetensors", source=spec.source)
    assert cli("export", str(tmp_path / "q.safetensors"), "--to", "gguf", "--out", str(tmp_path / "q.gguf")).returncode == 0
    assert cli("export", str(tmp_path / "q.safetensors"), "--to", "hf", "--out", str(tmp_path / "ckpt")).returncode == 0
    x = spec.eval_batches[0][:2]
    with torch.no_grad():
        ref = exact(q)(x)  # both files hold the dequantised weights: compared with fp32 activations
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")(input_ids=x).logits
        from_gguf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf")(input_ids=x).logits
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(from_gguf, ref, atol=1e-4, rtol=1e-4)
    assert {t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "q.gguf")).tensors} >= {"Q4_0", "F32"}


def test_remove_padding_writes_a_minilm_file_with_the_padded_ones_outputs(tmp_path, minilm_spec):
    from tests.io.exact import exact_session

    q = bitladder.quantize(minilm_spec.model, Int(8), exclude=["*embeddings*"])
    art = bitladder.save(q, tmp_path / "m.safetensors", source="minilm")
    for name, extra in (("padded.onnx", []), ("unpadded.onnx", ["--remove-padding"])):
        res = cli("export", str(art), "--out", str(tmp_path / name), *extra)
        assert res.returncode == 0, res.stderr
    batch = minilm_spec.eval_batches[0]
    feeds = {k: v.numpy() for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    # fp32 activations (onnxruntime would round them to int8 per block in its MatMulNBits fusion)
    padded, unpadded = (exact_session(tmp_path / n).run(None, feeds)[0] for n in ("padded.onnx", "unpadded.onnx"))
    assert float((padded * unpadded).sum(-1).min()) > 0.99999  # weight-only: the same embeddings, float rounding
