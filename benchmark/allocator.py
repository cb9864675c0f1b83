"""Keep freed memory in the process while it trains, on Linux with glibc.

A training step allocates and frees the same activation buffers every time
(8 MB each for the masker's hidden layers). glibc's malloc serves blocks that
size with fresh ``mmap`` pages, or hands the top of its heap back to the OS
once enough of it is free, depending on what the process did before; in the
processes where it does, the next step faults every page back in, zero-filled
by the kernel. Measured on a 2-core VM, one thread: the masker ran 76 ms a
step with about 10,000 page faults, against 57.5 ms and none once the buffers
stayed (docs/performance.md). Setting the thresholds makes the fast case the
only case. The layout of memory never changes a computed value.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Blocks below this come from the heap and are reused; larger ones (the image
# bank, evaluation batches) still get their own mappings, returned when freed.
# 32 MiB is the largest value glibc accepts on 64-bit systems.
MMAP_THRESHOLD = 32 * 1024 * 1024
# The heap is trimmed only when this much is free at its top.
TRIM_THRESHOLD = 1024 * 1024 * 1024

# Set by a user who tunes malloc themselves; then theirs stands.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, once.

    Returns whether they were set: not on other C libraries, and not where the
    environment already tunes malloc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(
        M_TRIM_THRESHOLD, TRIM_THRESHOLD
    )
    if not done:
        log.debug("glibc refused the malloc thresholds; keeping its defaults")
    return bool(done)
