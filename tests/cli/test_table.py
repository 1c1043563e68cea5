from rich.console import Console

from bitladder.cli.table import bench_table


def _text(rows) -> str:
    console = Console(width=250, record=True)
    console.print(bench_table(rows))
    return console.export_text()


def test_bench_table_shows_the_round_spread_where_the_bench_has_it():
    rows = [{"case": "minilm", "batch": 32, "variant": "ours", "latency_ms": 100.0, "ratio_vs_fp32": 2.29,
             "ratio_vs_fp32_iqr": [2.21, 2.37], "cos_mean": 0.9992},
            {"case": "linear", "shape": [4096, 4096], "batch": 1, "variant": "int4", "latency_ms": 1.5,
             "ratio_vs_fp32": 13.3}]
    text = _text(rows)
    assert "2.29 (2.21-2.37)" in text
    assert "13.30" in text and "13.30 (" not in text


def test_bench_table_has_the_limit_fraction_column():
    text = _text([{"case": "linear", "shape": [4096, 4096], "batch": 1, "variant": "int4", "latency_ms": 1.5,
                   "ratio_vs_fp32": 13.3, "limit_fraction": 0.734}])
    assert "limit" in text and "0.73" in text


def test_bench_table_shows_the_paired_fraction_beside_the_limit_fraction():
    text = _text([{"case": "linear", "shape": [4096, 4096], "batch": 1, "variant": "int4", "latency_ms": 1.5,
                   "ratio_vs_fp32": 13.3, "limit_fraction": 0.612, "paired_limit_fraction": 0.781}])
    assert "0.61 [0.78]" in text
