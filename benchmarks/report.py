"""Benchmark results as data, and the one table that prints them.

Every benchmark's data function returns a list of rows made by `row()`: plain
dicts with
    id        a short key to look a row up (find())
    task      what was measured, as printed
    tinymech  tinymech's value (in `unit`)
    reference the reference's value (in `unit`), or None
    ref_name  what the reference is (HF, TL, SAELens, numpy, ...)
    unit      tok/s, ms, s, MB, GF/s, ...
    ratio     the number the target is about (the task says which way), or None
    target    target(...) or None;  met: True / False / None (no target)
    kernels   the kernel variant the row ran on (run_all fills it in where a
              benchmark did not)
    note      free text
plus any extra keys a script wants for its own printing.
"""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from cpus import cpu_identity, cpu_model, physical_cores


class Skipped(Exception):
    """A benchmark that cannot run on this machine; the message says why."""


_OPS = {
    ">=": lambda x, b: x >= b,
    ">": lambda x, b: x > b,
    "<=": lambda x, b: x <= b,
    "<": lambda x, b: x < b,
    "within": lambda x, b: abs(x - 1.0) <= b,  # a ratio within ±b of 1
}
_OP_TEXT = {">=": "≥", ">": ">", "<=": "≤", "<": "<"}


def target(op: str, bound: float, of: str = "ratio") -> dict:
    """A target on the row's ratio (of="ratio") or on tinymech's value (of="value").
    op is one of >=, >, <=, <, or "within" (ratio within ±bound of 1)."""
    if op not in _OPS or of not in ("ratio", "value"):
        raise ValueError(f"bad target {op!r} of {of!r}")
    return {"op": op, "bound": bound, "of": of}


def row(id: str, task: str, tinymech: float, reference: float | None = None, unit: str = "",
        ratio: float | None = None, *, ref_name: str = "", target: dict | None = None,
        note: str = "", **extra) -> dict:
    r = dict(id=id, task=task, tinymech=tinymech, reference=reference, ref_name=ref_name, unit=unit,
             ratio=ratio, target=target, note=note, **extra)
    r["met"] = check(r)
    return r


def check(r: dict) -> bool | None:
    t = r.get("target")
    if not t:
        return None
    x = r["ratio"] if t["of"] == "ratio" else r["tinymech"]
    return None if x is None else bool(_OPS[t["op"]](x, t["bound"]))


def find(rows, id: str) -> dict | None:
    return next((r for r in rows or () if r["id"] == id), None)


def number(x: float | None) -> str:
    """A number with about three significant digits, no exponent."""
    if x is None:
        return ""
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1 or a == 0:
        return f"{x:.2f}"
    return f"{x:.3g}"  # three significant digits: 0.0123


def target_text(r: dict) -> str:
    t = r.get("target")
    if not t:
        return ""
    if t["op"] == "within":
        return f"within {t['bound']:.0%}"
    suffix = "×" if t["of"] == "ratio" else f" {r['unit']}"
    return f"{_OP_TEXT[t['op']]}{t['bound']:g}{suffix}"


def cells(r: dict) -> list:
    ours = f"{number(r['tinymech'])} {r['unit']}".strip()
    ref = ""
    if r["reference"] is not None:
        ref = f"{number(r['reference'])} {r['unit']}".strip()
        if r["ref_name"]:
            ref += f" ({r['ref_name']})"
    ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}×"
    met = {True: "met", False: "NOT met", None: ""}[r["met"]]
    return [r["task"], ours, ref, ratio, target_text(r), met, r.get("kernels") or "", r.get("note", "")]


HEADER = ["task", "tinymech", "reference", "ratio", "target", "met", "kernels", "note"]


def format_table(rows, markdown: bool = False) -> str:
    body = [cells(r) for r in rows]
    header = list(HEADER)
    for i in (7, 6):  # no notes, or no kernel variants: drop the column
        if not any(c[i] for c in body):
            header, body = header[:i] + header[i + 1:], [c[:i] + c[i + 1:] for c in body]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |" for cols in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *body)]

    left = {0, len(header) - 1} if header[-1] == "note" else {0}

    def line(cols):  # task and note left-aligned, the rest right-aligned
        out = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))]
        return "  ".join(out).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(c) for c in body])


# ---- the machine ----------------------------------------------------------------------------


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


# What holds the references to AVX2, read when their libraries load: numpy's
# OpenBLAS (a DYNAMIC_ARCH build, as numpy's wheels are), torch's MKL (Intel
# CPUs), its own kernels and oneDNN. The report names those set.
AVX2_REFERENCES = {"OPENBLAS_CORETYPE": "Haswell", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                   "ONEDNN_MAX_CPU_ISA": "AVX2"}


def machine_description(threads: int) -> list:
    """Lines describing the machine and software a run measured."""
    import tinymech as tm

    logical = os.cpu_count()
    physical = physical_cores()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = logical
    cores = f"{logical} logical cores" + (f", {physical} physical" if physical else "")
    if usable != logical:
        cores += f", {usable} usable by this process"
    if identity := cpu_identity():
        cores = f"{identity}; {cores}"
    torch_threads = ""
    if "torch" in sys.modules:
        torch_threads = f", torch {sys.modules['torch'].get_num_threads()}"
    versions = ", ".join(f"{p} {version(p)}" for p in ("numpy", "torch", "transformers", "transformer_lens", "sae_lens"))
    lines = [
        f"CPU: {cpu_model()} ({cores}); {platform.system()} {platform.release()}",
        f"threads used: {threads} (tinymech {tm.get_num_threads()}{torch_threads}); "
        f"tinymech {tm.__version__}, kernels {tm._core.kernels.variant()}",
        f"python {platform.python_version()}, {versions}",
    ]
    held = [f"{name}={os.environ[name]}" for name in AVX2_REFERENCES if os.environ.get(name)]
    if held:
        took = ""  # what torch's own kernels run (the others do not say)
        if "torch" in sys.modules:
            took = f" (torch's CPU capability: {sys.modules['torch'].backends.cpu.get_cpu_capability()})"
        lines.append("references' kernels held by " + ", ".join(held) + took)
    return lines
