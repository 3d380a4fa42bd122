"""Keep freed memory for reuse: the allocator setting that large worlds run fastest with.

A tick allocates and frees the same large temporary arrays again and again (per-edge arrays of
megabytes in a firm-level world). By default glibc hands freed memory at the top of its heap
back to the system, and allocations above a threshold get fresh pages each time; either way
the next tick touches fresh pages, and each costs a page fault — about 10 µs on a virtual
machine, where a 10,000-buyer world then spent a fifth of its tick faulting. Asking glibc to
keep freed memory (the heap trim threshold) and to serve arrays up to 32 MB from it (the mmap
threshold) makes a tick reuse the memory of the last one: the same world runs about 25 %
faster with no change to any result.

The cost is that a process keeps the memory it has used at its peak until it exits (it is
reused by later allocations, not returned). Set ``ABM_RETURN_FREED_MEMORY=1`` to leave the
allocator as it is. Only glibc (Linux) is tuned; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 30  # free memory kept at the top of the heap, bytes
MMAP_THRESHOLD = 32 << 20  # largest allocation served from the heap (glibc's maximum)

_done = False


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds once per process; True if they are set."""
    global _done
    if _done:
        return True
    if os.environ.get("ABM_RETURN_FREED_MEMORY", "0") not in ("", "0"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _done
