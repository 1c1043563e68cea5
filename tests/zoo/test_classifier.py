"""A Hugging Face sequence-classifier folder as a model: accuracy on a file's labels, agreement with fp32
without them, the ladder and a reload from the artifact's hf: source, and one-line errors for bad labels."""

import json
import shutil

import pytest
import torch

from bitladder.cli.app import main
from bitladder.errors import BitladderError
from bitladder.io.artifact import load
from bitladder.nn.base import QuantModule
from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.zoo import classifier
from bitladder.zoo import corpus
from bitladder.zoo.minilm import model_dir, tokenize
from bitladder.zoo.registry import build_builtin, resolve

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TOKENIZER = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def classifier_folder(path):
    """A small BERT classifier (random weights, MiniLM's tokenizer) with clear margins between classes."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=128, num_labels=3, id2label=LABELS,
                     initializer_range=0.1,
                     label2id={v: k for k, v in LABELS.items()})
    m = BertForSequenceClassification(cfg).eval()
    # wider random weights (initializer_range 0.1, not 0.02) make the logits depend on the sentence; centred on sample
    # text, every class wins somewhere
    enc = tokenize(corpus.eval_sentences(64), 64, model_dir())[0]
    with torch.no_grad():
        m.classifier.bias.sub_(m(**enc).logits.mean(0))
    m.save_pretrained(str(path), safe_serialization=True)
    for f in TOKENIZER:
        shutil.copy(f"{model_dir()}/{f}", path / f)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return classifier_folder(tmp_path_factory.mktemp("cls") / "m")


def _labelled(folder, path):
    """A JSONL file labelled with the fp32 model's own predictions (named), so fp32 scores 1.0 on it."""
    spec = resolve(str(folder))
    sentences = [f"Compressed model {i} answers question {i * 7 % 13} in {i % 5} milliseconds." for i in range(80)]
    with torch.no_grad():
        pred = torch.cat([spec.model(**b).argmax(-1) for b in tokenize(sentences, 32, str(folder))])
    path.write_text("\n".join(json.dumps({"text": s, "label": LABELS[int(p)]}) for s, p in zip(sentences, pred)))
    return path


def test_without_labels_fidelity_is_agreement_with_fp32(folder):
    spec = resolve(str(folder))
    assert spec.metric == "accuracy" and spec.source == "hf:" + str(folder.resolve())
    ref = outputs(spec.model, spec.eval_batches)
    assert ref.shape[1] == 3 and fidelity(spec, ref, ref)["fidelity"] == 1.0
    assert len(set(spec.targets.tolist())) > 1  # the margins make more than one class win
    assert spec.train_targets is None  # training steps distil from fp32


def test_the_ladder_scores_labels_and_the_artifact_reloads(folder, tmp_path, capsys):
    data = _labelled(folder, tmp_path / "l.jsonl")
    spec = resolve(str(folder), data=data)
    assert spec.train_targets is not None and fidelity(spec, outputs(spec.model, spec.eval_batches),
                                                        outputs(spec.model, spec.eval_batches))["fidelity"] == 1.0
    main(["ladder", "--model", str(folder), "--data", str(data), "--rungs", "int8,fp16", "--repeats", "1",
          "--out", str(tmp_path / "out")])
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rungs"]
    assert rows[0]["fidelity"] >= 0.9 and rows[1]["fidelity"] >= 0.95  # of 1.0 for fp32; chance is 1/3
    back = load(tmp_path / "out" / rows[0]["artifact"], builder=build_builtin)  # rebuilt from the hf: source
    assert isinstance(back, classifier.Classifier)
    capsys.readouterr()
    # and it runs in plain onnxruntime, batch and sequence dynamic (basic optimisations: at ORT_ENABLE_ALL
    # onnxruntime turns DequantizeLinear -> MatMul into int8-activation MatMulNBits, docs/DESIGN.md)
    import onnxruntime as ort

    main(["export", str(tmp_path / "out" / rows[0]["artifact"]), "--to", "onnx", "--out", str(tmp_path / "c.onnx")])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(tmp_path / "c.onnx"), so)
    assert [i.shape for i in sess.get_inputs()] == [["batch", "seq"], ["batch", "seq"]]
    for m in back.modules():  # the reference path: auto picks int8-activation kernels at some row counts
        if isinstance(m, QuantModule):
            m.set_kernel_policy("dequant-fp32")
    for b in spec.eval_batches[:2]:
        got = sess.run(None, {i.name: b[i.name].numpy() for i in sess.get_inputs()})[0]
        with torch.no_grad():
            want = back(**b).numpy()
        assert abs(got - want).max() <= 1e-4 * abs(want).max()


def test_bad_labels_are_one_line(folder, tmp_path):
    bad = tmp_path / "b.jsonl"
    bad.write_text("\n".join(json.dumps({"text": f"sample {i}", "label": "maybe" if i == 3 else 1}) for i in range(8)))
    with pytest.raises(BitladderError, match="label 'maybe' is not a class of this model; accepted: 0..2 or negative"):
        resolve(str(folder), data=bad)
    bad.write_text("\n".join(json.dumps({"text": f"sample {i}", "label": 7}) for i in range(8)))
    with pytest.raises(BitladderError, match="label 7 is not a class"):
        resolve(str(folder), data=bad)


def test_task_embedding_runs_the_classifiers_encoder_and_reloads_as_one(folder, tmp_path, capsys):
    from transformers import AutoModel

    from bitladder.zoo import hf_folder
    from bitladder.zoo.minilm import SentenceEncoder

    spec = resolve(str(folder), task="embedding")
    assert spec.metric == "cosine" and spec.source == "hf:" + str(folder.resolve()) + "?task=embedding"
    enc = SentenceEncoder(AutoModel.from_pretrained(str(folder), use_safetensors=True, attn_implementation="sdpa"))
    with torch.no_grad():  # the classifier's own encoder weights, mean-pooled: not a freshly initialised one
        b = spec.eval_batches[0]
        torch.testing.assert_close(spec.model(**b), enc.eval()(**b))
        assert spec.model(**b).shape[1] == 64
    main(["ladder", "--model", str(folder), "--task", "embedding", "--rungs", "int8", "--repeats", "1",
          "--out", str(tmp_path / "out")])
    row = json.loads((tmp_path / "out" / "results.json").read_text())["rungs"][0]
    assert row["fidelity"] >= 0.99  # mean cosine to fp32
    back = load(tmp_path / "out" / row["artifact"], builder=build_builtin)  # the source names the task
    assert not isinstance(back, classifier.Classifier)
    assert hf_folder.split_task(spec.source) == ("hf:" + str(folder.resolve()), "embedding")
    capsys.readouterr()


def test_tasks_the_checkpoint_cannot_serve_are_refused(folder, tmp_path):
    from tests.zoo.llama_folders import llama_folder

    with pytest.raises(BitladderError, match="cannot run as causal-lm .*; accepted here: classification, embedding"):
        resolve(str(folder), task="causal-lm")
    with pytest.raises(BitladderError, match="unknown task 'speech'; accepted: embedding, classification, causal-lm"):
        resolve(str(folder), task="speech")
    with pytest.raises(BitladderError, match="--task applies to Hugging Face folders; 'digits' is not one"):
        resolve("digits", task="embedding")
    lm = llama_folder(tmp_path / "lm", layers=1)
    with pytest.raises(BitladderError, match="a llama causal-lm checkpoint cannot run as classification .*accepted "
                                             "here: causal-lm$"):
        resolve(str(lm), task="classification")
    assert resolve(str(lm), task="causal-lm").metric == "perplexity"  # its own task, named: accepted
    with pytest.raises(SystemExit) as e:  # the CLI: one line, exit 2, nothing written
        from bitladder.cli.app import main as cli

        cli(["ladder", "--model", str(lm), "--task", "embedding", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and not (tmp_path / "o").exists()
