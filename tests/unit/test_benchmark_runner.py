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


def _cpuinfo(path, vendor, family, model, flags):
    block = (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
             f"model name\t: AMD EPYC\nflags\t\t: {flags}\n")
    path.write_text(block + "\n" + block.replace("processor\t: 0", "processor\t: 1"))
    return path


def test_the_report_tells_apart_cpus_that_share_a_model_name(run_all, tmp_path):
    """VMs call Zen 3, Zen 4 and Zen 5 alike "AMD EPYC": the family and model name the
    microarchitecture, with the SIMD extensions and the L2 and L3 sizes beside them."""
    from cpus import cpu_identity, cpu_model, microarchitecture, physical_cores

    caches = tmp_path / "cache"
    for index, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"),
                                                 (2, "Unified", "1024K"), (3, "Unified", "32768K")]):
        (caches / f"index{index}").mkdir(parents=True)
        for name, text in (("level", f"{level}\n"), ("type", f"{kind}\n"), ("size", f"{size}\n")):
            (caches / f"index{index}" / name).write_text(text)
    zen5 = _cpuinfo(tmp_path / "zen5", "AuthenticAMD", 26, 2, "fpu sse avx2 fma avx512f avx512_bf16 avx_vnni")
    assert cpu_identity(zen5, caches) == (
        "Zen 5: AMD family 26, model 2; avx2, fma, avx512f, avx512_bf16, avx_vnni; L2 1 MiB, L3 32 MiB")
    zen3 = _cpuinfo(tmp_path / "zen3", "AuthenticAMD", 25, 1, "avx2 fma")
    zen4 = _cpuinfo(tmp_path / "zen4", "AuthenticAMD", 25, 17, "avx2 fma avx512f avx512_bf16")
    emr = _cpuinfo(tmp_path / "emr", "GenuineIntel", 6, 207, "avx2 fma avx512f avx512_bf16 amx_tile")
    assert cpu_identity(zen3, tmp_path / "none") == "Zen 3: AMD family 25, model 1; avx2, fma"
    assert cpu_identity(zen4, tmp_path / "none").startswith("Zen 4: AMD family 25, model 17; ")
    assert cpu_identity(emr, tmp_path / "none").startswith("Emerald Rapids: Intel family 6, model 207; ")
    # families interleave generations (review: 0x17's models 0x50-0x5f are Zen, 0x1a's Zen 6)
    assert [microarchitecture("AuthenticAMD", family, model) for family, model in
            [(0x17, 0x18), (0x17, 0x31), (0x17, 0x50), (0x19, 0x61), (0x19, 0x90), (0x1A, 0x44), (0x1A, 0x50),
             (0x1A, 0x30)]] == ["Zen / Zen+", "Zen 2", "Zen / Zen+", "Zen 4", "Zen 4", "Zen 5", "Zen 6", None]
    # a CPU the tables do not name keeps its numbers; nothing known, nothing said
    odd = _cpuinfo(tmp_path / "odd", "HygonGenuine", 24, 1, "avx2")
    assert cpu_identity(odd, tmp_path / "none") == "HygonGenuine family 24, model 1; avx2"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve\nCPU part\t: 0xd40\n\nHardware\t: Graviton\n")
    assert cpu_identity(arm, tmp_path / "none") == "asimd, sve"
    assert cpu_identity(tmp_path / "missing", tmp_path / "none") == ""
    # the model name and the physical cores come from the same parse
    assert cpu_model(zen5) == "AMD EPYC" and cpu_model(arm) == "Graviton"
    assert physical_cores(zen5) is None and physical_cores(tmp_path / "missing") is None
    smt = tmp_path / "smt"
    smt.write_text("".join(f"processor\t: {i}\nphysical id\t: 0\ncore id\t: {i // 2}\n\n" for i in range(4)))
    assert physical_cores(smt) == 2
