"""Process memory: what the kernel counts (``/proc/self/status``) and how much freed memory the C
allocator keeps.

glibc gives every thread that allocates its own malloc arena (up to 8 per core), and each arena
keeps the peak of the transient buffers its threads freed (SIFT's scale space, CNN activations).
A localizing process has many such threads (the global-descriptor worker, torch's and OpenCV's
pools, pycolmap's), so its anonymous memory grew by ~100 MB over the first queries on 7-Scenes
with the default arenas and stayed within 10 % of the first query's with 2
(docs/benchmarks.md, "Large maps"). :func:`limit_malloc_arenas` is process-wide, so only entry
points call it (the ``vloc`` command, benchmarks), never the library; a program that embeds the
Localizer may call it first thing, or start with ``MALLOC_ARENA_MAX=2``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter


def status_mb(field: str = "RssAnon") -> float:
    """A ``/proc/self/status`` field in MiB: ``RssAnon`` (anonymous resident memory: what the
    process allocated itself, not the page cache of memory-mapped files), ``RssFile``, ``VmHWM``..."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    raise ValueError(f"/proc/self/status has no field {field!r} (Linux only)")


def limit_malloc_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas at ``count`` for the rest of the process; False (and a debug log
    line) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.debug("C library %s has no mallopt: malloc arenas left as they are", name)
        return False
    ok = bool(mallopt(M_ARENA_MAX, int(count)))
    logger.debug("malloc arenas capped at %d: %s", count, ok)
    return ok
