"""Timing and set lookup shared by the benchmark scripts."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls of ``fn`` after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def set_root(name: str, data: Path, work: Path) -> Path:
    """A prepared set's directory ``DATA/prepared/NAME``, or for ``demo`` the rendered demo scene
    (rendered into ``WORK/demo_scene`` unless it is there)."""
    if name != "demo":
        return data / "prepared" / name
    from vloc.demo.scene import render_demo_scene

    root = work / "demo_scene"
    if not root.exists():
        render_demo_scene(root)
    return root
