"""Keep freed host memory in the process, so that a training step on the CPU does not page-fault
its tensors in again at every step.

glibc's ``malloc`` serves blocks of 128 KiB and more by ``mmap`` and returns them to the system
when they are freed, and trims the heap whenever more than a few hundred KiB at its top are free.
A training step allocates and frees the same tensors at every step (activations, gradients, the
``K`` gradients ``dL_k/dz`` of the Jacobian engine), so each step maps them again and the kernel
zero-fills every page on first touch (``scripts/bench_host.py`` measures the effect on whole
steps; ``BENCHMARKS.md``).

``retain_freed_host_memory`` raises both thresholds once (``mallopt``): blocks up to 32 MiB come
from the heap, and the heap is never trimmed, so freed memory is reused by the next step. This is
what PyTorch's caching allocator does for GPU memory; the process keeps the memory of its largest
step (more if steps of varied sizes fragment the heap), and DataLoader workers forked after the
call inherit the setting. Elsewhere than on glibc (macOS, musl) it does nothing. ``mtl-train``
calls it unless ``retain_freed_host_memory=false``.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
"""glibc's largest mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)."""
NEVER_TRIM = 2**31 - 1
"""The largest value ``mallopt`` takes (an ``int``): free memory at the heap's top up to 2 GiB stays."""


def retain_freed_host_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse; whether it could (False off glibc)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the running process's symbols, glibc's among them
    applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    if not applied:
        log.warning("glibc's mallopt refused the thresholds; freed host memory goes back to the system")
    return applied
