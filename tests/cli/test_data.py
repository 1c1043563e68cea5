"""--data on the command line: a text model evaluates on the user's file, others refuse it in one line."""

import json

from tests.cli.test_cli import cli, one_line_error


def test_ladder_measures_perplexity_on_the_users_text(tmp_path):
    data = tmp_path / "notes.txt"
    data.write_text("\n".join(f"Shipping note {i}: crate {i * 13 % 97} holds {i % 9} bolts and a spare fuse."
                              for i in range(400)))
    res = cli("ladder", "--model", "tinylm", "--data", str(data), "--rungs", "int8", "--repeats", "1",
              "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    corpus = cli("ladder", "--model", "tinylm", "--rungs", "int8", "--repeats", "1", "--out", str(tmp_path / "c"))
    assert corpus.returncode == 0, corpus.stderr
    got, ref = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("run", "c"))
    row, base = ([r for r in x["rungs"] if r["rung"] == "int8"][0] for x in (got, ref))
    assert row["fp32_perplexity"] != base["fp32_perplexity"]  # another text, another perplexity
    assert row["perplexity"] / row["fp32_perplexity"] < 1.01  # int8 stays within 1 % on it too


def test_data_for_an_image_model_or_a_bad_file_is_one_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n{"text": 5}\n')
    one_line_error(cli("mixed", "--model", "digits", "--data", str(data), "--out", str(tmp_path / "m")),
                   "'digits' is not a text model")
    one_line_error(cli("ladder", "--model", "tinylm", "--data", str(data), "--out", str(tmp_path / "l")),
                   "d.jsonl:2", "\"text\"")
