"""The HTML report's figures from tune results, including trials a killed worker left half-written."""

from bitladder.pipeline.report.html import _points, render


def _trial(number, state, **figures):
    return {"number": number, "state": state, "params": {}, "feasible": state == "COMPLETE", **figures}


def test_trials_a_killed_worker_left_half_written_are_no_points():
    # a SIGKILL between two user-attribute writes: fidelity recorded, the size and latency not (a resumed tune
    # rendered its report from such a row and failed sorting None against numbers)
    done = {"fidelity": 0.97, "model_bytes": 1000, "latency_ms": 2.0, "bits_per_weight": 4.1}
    results = {"model": "m", "metric": "accuracy", "fp32_fidelity": 0.98, "rungs": [],
               "trials": [_trial(0, "COMPLETE", **done), _trial(1, "FAIL", fidelity=0.5),
                          _trial(2, "COMPLETE", **{**done, "fidelity": 0.95, "model_bytes": 600}),
                          _trial(3, "RUNNING", **done)]}
    assert [p["label"] for p in _points(results)] == ["#0", "#2"]
    page = render(results)
    assert "Pareto front: fidelity vs size" in page and "Pareto front: fidelity vs latency" in page
