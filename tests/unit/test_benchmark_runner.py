"""benchmarks/run_all.py keeps what it measured when one benchmark fails."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def run_all(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import run_all
    return run_all


def _fake_module(monkeypatch, name, **functions):
    module = types.ModuleType(name)
    module.__dict__.update(functions)
    monkeypatch.setitem(sys.modules, name, module)


def test_a_failing_benchmark_keeps_the_rows_measured_before_and_after_it(run_all, monkeypatch, capsys):
    from report import row

    def broken(**_):
        raise RuntimeError("the child could not import tinymech")

    _fake_module(monkeypatch, "bench_sae", sae_rows=broken)
    _fake_module(monkeypatch, "roofline", roofline_rows=lambda threads, repeats: [row("mm", "matmul", 1.0, unit="GF/s")])
    args = run_all.parse_args(["--only", "sae,roofline", "--repeats", "1"])
    rows, skipped, failed = run_all.run(args)
    assert [r["id"] for r in rows] == ["mm"]
    assert failed == [("sae", "RuntimeError: the child could not import tinymech")]
    assert skipped == []
    err = capsys.readouterr().err
    assert "matmul" in err  # each row is printed as soon as it is measured


def test_sae_training_runs_its_quick_budget_unless_given_train_tokens(run_all, monkeypatch):
    from report import row

    asked = []

    def sae_training_rows(tokens=None):
        asked.append(tokens)
        return [row("sae-train-demo", "SAE training", 2.0, 1.0, "tok/s", 2.0)]

    _fake_module(monkeypatch, "bench_sae_training", sae_training_rows=sae_training_rows)
    for argv in (["--only", "sae_training"], ["--only", "sae_training", "--train-tokens", "8192"]):
        rows, skipped, failed = run_all.run(run_all.parse_args(argv))
        assert [r["id"] for r in rows] == ["sae-train-demo"] and not skipped and not failed
    assert asked == [None, {"smollm2": 8192, "demo": 8192}]
