"""Which CPU a benchmark ran on: its model name and physical cores, and beyond the
name (a VM may call Zen 3, Zen 4 and Zen 5 alike "AMD EPYC", and an Intel one just
"Xeon Processor") cpu_identity(): the microarchitecture from the family and model in
/proc/cpuinfo, the SIMD extensions the kernels choose by, the L2 and L3 sizes."""
from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# (family, first model, last model, name), as Linux's arch/x86/kernel/cpu/amd.c has them:
# a family interleaves generations
AMD = [
    (0x17, 0x00, 0x2F, "Zen / Zen+"), (0x17, 0x50, 0x5F, "Zen / Zen+"),
    (0x17, 0x30, 0x4F, "Zen 2"), (0x17, 0x60, 0x7F, "Zen 2"), (0x17, 0x90, 0x91, "Zen 2"), (0x17, 0xA0, 0xAF, "Zen 2"),
    (0x19, 0x00, 0x0F, "Zen 3"), (0x19, 0x20, 0x5F, "Zen 3"), (0x19, 0x10, 0x1F, "Zen 4"), (0x19, 0x60, 0xAF, "Zen 4"),
    (0x1A, 0x00, 0x2F, "Zen 5"), (0x1A, 0x40, 0x4F, "Zen 5"), (0x1A, 0x60, 0x7F, "Zen 5"),
    (0x1A, 0x50, 0x5F, "Zen 6"), (0x1A, 0x80, 0xAF, "Zen 6"), (0x1A, 0xC0, 0xEF, "Zen 6"),
]
# Intel's family 6, by model
INTEL = {
    0x3C: "Haswell", 0x3F: "Haswell", 0x45: "Haswell", 0x46: "Haswell",
    0x3D: "Broadwell", 0x47: "Broadwell", 0x4F: "Broadwell", 0x56: "Broadwell",
    0x4E: "Skylake", 0x5E: "Skylake", 0x55: "Skylake-SP / Cascade / Cooper Lake",
    0x8E: "Kaby / Coffee Lake", 0x9E: "Kaby / Coffee Lake", 0xA5: "Comet Lake", 0xA6: "Comet Lake",
    0x7D: "Ice Lake", 0x7E: "Ice Lake", 0x6A: "Ice Lake-SP", 0x6C: "Ice Lake-SP",
    0x8C: "Tiger Lake", 0x8D: "Tiger Lake", 0xA7: "Rocket Lake",
    0x97: "Alder Lake", 0x9A: "Alder Lake", 0xBE: "Alder Lake-N",
    0xB7: "Raptor Lake", 0xBA: "Raptor Lake", 0xBF: "Raptor Lake", 0xAA: "Meteor Lake", 0xAC: "Meteor Lake",
    0xBD: "Lunar Lake", 0xC5: "Arrow Lake", 0xC6: "Arrow Lake", 0xB5: "Arrow Lake",
    0x8F: "Sapphire Rapids", 0xCF: "Emerald Rapids", 0xAD: "Granite Rapids", 0xAE: "Granite Rapids",
    0xAF: "Sierra Forest",
}
# the extensions the kernel variants and the benchmarks' references choose by, as /proc/cpuinfo names them
SIMD = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "asimd", "sve"]


def processors(cpuinfo=CPUINFO) -> list[dict]:
    """/proc/cpuinfo's blocks as {field: value} (none where it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return []
    return [{k.strip(): v.strip() for k, sep, v in (line.partition(":") for line in block.splitlines()) if sep}
            for block in text.split("\n\n") if block.strip()]


def cpu_model(cpuinfo=CPUINFO) -> str:
    for fields in processors(cpuinfo):  # ARM's "Hardware" follows the processors' blocks
        for key, value in fields.items():
            if key.lower() in ("model name", "hardware", "cpu model"):
                return value
    return platform.processor() or platform.machine() or "unknown CPU"


def physical_cores(cpuinfo=CPUINFO) -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo, None if unknown."""
    cores = {(f.get("physical id"), f["core id"]) for f in processors(cpuinfo) if "core id" in f}
    return len(cores) or None


def microarchitecture(vendor: str, family: int, model: int) -> str | None:
    if vendor == "AuthenticAMD":
        return next((name for f, lo, hi, name in AMD if f == family and lo <= model <= hi), None)
    if vendor == "GenuineIntel" and family == 6:
        return INTEL.get(model)
    return None


def size_bytes(text: str) -> int | None:
    """A cache size as sysfs writes it ("48K", "32M") in bytes; None if it is not one."""
    text = text.strip()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text.rstrip("KMG")
    return int(digits) * scale if digits.isdigit() else None


def cache_sizes(caches=Path("/sys/devices/system/cpu/cpu0/cache")) -> dict:
    """{level: bytes} of CPU 0's unified caches (L2, L3), from Linux's sysfs."""
    sizes = {}
    for index in sorted(Path(caches).glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Unified":
                size = size_bytes((index / "size").read_text())
                if size:
                    sizes[int((index / "level").read_text())] = size
        except (OSError, ValueError):
            continue
    return sizes


def _binary(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n >> 10} KiB"


def cpu_identity(cpuinfo=CPUINFO, caches=Path("/sys/devices/system/cpu/cpu0/cache")) -> str:
    """"Zen 5: AMD family 26, model 2; avx2, fma, avx512f, avx512_bf16; L2 1 MiB, L3 32 MiB",
    what of it is known ('' where nothing is)."""
    fields = (processors(cpuinfo) or [{}])[0]
    parts = []
    vendor = fields.get("vendor_id", "")
    try:
        family, model = int(fields["cpu family"]), int(fields["model"])
    except (KeyError, ValueError):
        family = model = None
    if family is not None:
        name = microarchitecture(vendor, family, model)
        maker = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(vendor, vendor)
        parts.append(f"{name + ': ' if name else ''}{maker} family {family}, model {model}".strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    if simd := [f for f in SIMD if f in flags]:
        parts.append(", ".join(simd))
    if sizes := cache_sizes(caches):
        parts.append(", ".join(f"L{level} {_binary(size)}" for level, size in sorted(sizes.items())))
    return "; ".join(parts)
