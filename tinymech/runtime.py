"""The core's threads, kernel variants and kept memory: settings for every model at once."""
from __future__ import annotations

import os

from . import _core
from .errors import InvalidInputError, whole_number


def set_num_threads(n: int) -> None:
    """Threads used by the core. 0 or less: the default, which is
    TINYMECH_NUM_THREADS or else OMP_NUM_THREADS when set, else the physical
    cores among the CPUs this process may run on (its affinity mask). At most
    _core.MAX_THREADS (1024), as for the variables; a thread the system refuses
    leaves the count as it was."""
    n = whole_number(n, "the thread count")
    if n > _core.MAX_THREADS:
        raise InvalidInputError(f"at most {_core.MAX_THREADS} threads, not {n}")
    _core.set_num_threads(max(n, 0))


def get_num_threads() -> int:
    return _core.get_num_threads()


def kernel_variants() -> list[str]:
    """The SIMD kernel variants this CPU can run, fastest first (e.g. avx512_bf16, avx512, avx2, scalar)."""
    return list(_core.kernels.available())


def kernel_variant() -> str:
    """The kernel variant in use."""
    return _core.kernels.variant()


def set_kernel_variant(name: str) -> None:
    """Use another kernel variant, for every model. "avx512" instead of "avx512_bf16"
    keeps a bf16 model's prefill in float32 arithmetic (no bfloat16 dot products)."""
    if name not in kernel_variants():
        raise ValueError(f"kernel variant {name!r} is not available on this CPU; choose from {kernel_variants()}")
    _core.kernels.select(name)


def release_memory() -> int:
    """Give back the memory kept from dropped activation caches; returns the bytes freed.

    Captured activations live in buffers that, once their arrays are dropped,
    are kept (up to 1 GiB) for the next run_with_cache of the same shapes:
    faulting in fresh pages costs more than filling them. Call this when done
    caching to return that memory to the system."""
    return int(_core.release_pooled_buffers())


def physical_memory() -> int:
    """The machine's memory in bytes (1 TiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def check_memory(need: int, what: str, advice: str) -> None:
    """InvalidInputError when `what` needs more than the machine's memory: the core zero-fills its
    arrays, so past the memory comes the OOM killer (or a bare bad_alloc), not a MemoryError."""
    memory = physical_memory()
    if need > memory:
        raise InvalidInputError(f"{what} would need {need / 2**30:.1f} GiB, more than this machine's "
                                f"{memory / 2**30:.1f} GiB: {advice}")
