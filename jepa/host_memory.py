"""Keep freed host memory in the process (glibc), so CPU training does not page-fault every step.

glibc serves allocations above a threshold (at most 32 MiB) with a fresh ``mmap`` and returns them
to the kernel when freed, and trims the top of its heap. A CPU training step allocates and frees
the same large activations every step, so each step faults every page of them in again, zeroed by
the kernel: a ViT-S/16 step at 224 px (batch 16) took ~90,000-200,000 minor faults and ~350 ms of
system time, against 6 faults and ~50 ms with the heap kept (``jepa bench train`` prints the
faults per step; docs/benchmarks.md). :func:`retain_freed_memory` tells glibc to serve everything from its heap and
never trim it; the process then holds on to its peak memory until it exits, as a GPU caching
allocator does. CPU training and CPU evaluation (``jepa eval``) call it.

Set ``JEPA_RETAIN_FREED_MEMORY=0`` to keep glibc's defaults (e.g. a CPU run that must give memory
back while it runs). Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV_VAR = "JEPA_RETAIN_FREED_MEMORY"
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_NEVER = -1  # "-1 disables trimming completely" (mallopt(3))


def retain_freed_memory() -> bool:
    """Serve every allocation from glibc's heap and never trim it; True if applied.

    Applied once per process (the settings are process-wide and idempotent); a no-op returning
    False where the C library is not glibc or ``JEPA_RETAIN_FREED_MEMORY=0``.
    """
    if os.environ.get(ENV_VAR, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER))
