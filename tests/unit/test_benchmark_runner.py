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

    import tinymech as tm

    def broken(**_):
        raise RuntimeError("the child could not import tinymech")

    _fake_module(monkeypatch, "bench_sae", sae_rows=broken)
    _fake_module(monkeypatch, "roofline",
                 roofline_rows=lambda threads, repeats, **_: [row("mm", "matmul", 1.0, unit="GF/s")])
    args = run_all.parse_args(["--only", "sae,roofline", "--repeats", "1"])
    rows, skipped, failed = run_all.run(args)
    assert [r["id"] for r in rows] == ["mm"]
    assert rows[0]["kernels"] == tm.kernel_variant()  # stamped: the variant the row ran on
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


def test_the_table_has_a_kernels_column_only_where_a_row_names_its_variant(run_all):
    from report import format_table, row

    plain = [row("mm", "matmul", 1.0, 2.0, "GF/s", 0.5, note="x")]
    assert "kernels" not in format_table(plain, markdown=True)
    tagged = [row("mm", "matmul", 1.0, 2.0, "GF/s", 0.5, note="91% of avx2 FMA peak", kernels="avx2"),
              row("mm2", "matmul", 1.0, unit="GF/s")]
    table = format_table(tagged, markdown=True).splitlines()
    assert table[0] == "| task | tinymech | reference | ratio | target | met | kernels | note |"
    assert table[2].endswith("| avx2 | 91% of avx2 FMA peak |")
    text = format_table(tagged).splitlines()
    assert text[0].split() == ["task", "tinymech", "reference", "ratio", "target", "met", "kernels", "note"]
    assert text[2].endswith("avx2  91% of avx2 FMA peak")  # the note stays left-aligned, last


def test_kernels_avx2_holds_the_references_to_avx2_before_they_load(run_all, monkeypatch):
    """--kernels avx2 sets what holds numpy's and torch's kernels to AVX2, refuses once
    either has loaded (its kernels were picked then) or where the shell set another value,
    and the report names what held them; every benchmark, the roofline too, runs on it."""
    import report

    env = {}
    monkeypatch.setattr(run_all.os, "environ", env)  # (report's os is the same module)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setitem(sys.modules, "numpy", types.ModuleType("numpy"))
    with pytest.raises(SystemExit, match="numpy already loaded"):
        run_all.hold_references_to_avx2()
    monkeypatch.delitem(sys.modules, "numpy")
    env["MKL_ENABLE_INSTRUCTIONS"] = "AVX512"
    with pytest.raises(SystemExit, match="this shell has MKL_ENABLE_INSTRUCTIONS=AVX512"):
        run_all.hold_references_to_avx2()
    assert env == {"MKL_ENABLE_INSTRUCTIONS": "AVX512"}
    env.clear()
    run_all.hold_references_to_avx2()
    assert env == {"OPENBLAS_CORETYPE": "Haswell", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                   "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert report.machine_description(1)[-1] == (
        "references' kernels held by OPENBLAS_CORETYPE=Haswell, MKL_ENABLE_INSTRUCTIONS=AVX2, "
        "ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2")
    assert run_all.parse_args(["--kernels", "avx2"]).variants == ["avx2"]
    assert run_all.parse_args(["--kernels", "avx2", "--variants", "avx2"]).variants == ["avx2"]
    with pytest.raises(SystemExit):
        run_all.parse_args(["--kernels", "avx2", "--variants", "avx512,avx2"])


def test_kernels_skips_llama_cpp_which_picks_its_own(run_all, monkeypatch):
    import gpt2_small

    monkeypatch.setattr(gpt2_small, "gpt2_small", lambda layers: _no_model())
    rows, skipped, failed = run_all.run(run_all.parse_args(["--kernels", "scalar", "--only", "llamacpp"]))
    assert rows == [] and failed == []
    assert skipped == [("llamacpp", "llama.cpp picks its own instruction set, not --kernels scalar")]


class _no_model:
    def __enter__(self):
        return None, None, None

    def __exit__(self, *exc):
        return False


def test_memory_probes_read_beyond_the_last_level_cache(run_all, tmp_path):
    """A VM may see its host's 300 MiB L3: a 256 MiB probe read it from cache."""
    from timing import beyond_caches_bytes, last_level_cache_bytes

    for index, size in enumerate(["48K", "2048K", "300M", "junk"]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    (tmp_path / "index4").mkdir()  # no size file
    assert last_level_cache_bytes(tmp_path) == 300 << 20
    assert last_level_cache_bytes(tmp_path / "none") == 0
    assert beyond_caches_bytes() >= 256 << 20
    assert beyond_caches_bytes(1 << 40) == 1 << 40
