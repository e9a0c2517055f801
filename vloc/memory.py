"""Process memory as the kernel counts it (Linux ``/proc/self/status``)."""
from __future__ import annotations

from pathlib import Path


def status_mb(field: str = "RssAnon") -> float:
    """A ``/proc/self/status`` field in MiB: ``RssAnon`` (anonymous resident memory: what the
    process allocated itself, not the page cache of memory-mapped files), ``RssFile``, ``VmHWM``..."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    raise ValueError(f"/proc/self/status has no field {field!r} (Linux only)")
