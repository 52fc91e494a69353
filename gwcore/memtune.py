"""glibc's malloc, set for the relay's body pieces: reused from the heap, not mapped afresh.

A relayed body moves through both ends of the tunnel in pieces of 256 KiB and more (the gateway's
target reads, the tunnel's batches and frames; the plane's WebSocket messages and its writes to the
caller). glibc serves each allocation over its mmap threshold (128 KiB at start, raised as mapped
chunks are freed) with a fresh mmap and unmaps it on free, and it gives freed heap over 128 KiB
back at once, so every piece costs its pages' faults and zeroing: a fifth of the gateway's CPU on
a 64 MiB download, and 43,000 page faults per GB in the plane (issue 14; docs/relay-performance.md).
Fixed thresholds keep pieces up to 1 MiB on the heap, where freed ones are reused, and let up to
8 MiB of free heap stay mapped before it is trimmed. Larger allocations (a filtered body of
several MiB) are still mapped and returned whole. `gateway run` and `mgmtplane serve` call it once
at start.

The call is gwcore/_memtune.c's (built like the filters' C code, and into the image). An administrator's own
MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES (read by glibc at start) wins:
then nothing is changed. Without the module nothing is changed either.
"""

from __future__ import annotations

import os

try:
    from gwcore import _memtune  # type: ignore[attr-defined]
except ImportError:  # not built here
    _memtune = None

MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 8 << 20
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def tune_malloc() -> bool:
    """Set the thresholds (once, at start); whether they were set."""
    if _memtune is None or any(name in os.environ for name in _ENV):
        return False
    return bool(_memtune.set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD))
