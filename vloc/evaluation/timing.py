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


STAGES = ("read", "global", "features", "match", "pose")  # LocalizationResult.timings keys, in order


def stage_percentiles(timings: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{"median": ..., "p90": ...}``, each the percentile per stage of :data:`STAGES` (a stage a
    query skipped counts as 0 s) and of the total, over per-query ``timings``."""
    return {label: {**{s: float(np.percentile([t.get(s, 0.0) for t in timings], q)) for s in STAGES},
                    "total": float(np.percentile([sum(t.values()) for t in timings], q))}
            for label, q in (("median", 50), ("p90", 90))}


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
