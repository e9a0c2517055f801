"""Localization accuracy: camera-centre distance and rotation angle against ground truth."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pycolmap

from vloc.io.poses import rotation_angle_deg

DEFAULT_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


def in_percent(meta: dict) -> bool:
    """A metric set whose errors are quoted relative to its size (temple: a small object): %."""
    return meta.get("eval_thresholds") == "relative" and str(meta.get("units", "")).startswith("metres")


def thresholds_for(meta: dict, thresholds: tuple[tuple[float, float], ...] = DEFAULT_THRESHOLDS,
                   ) -> tuple[tuple[tuple[float, float], ...], str, float]:
    """Translation thresholds in the set's units, the label of the unit they are quoted in, and
    that unit's length in the set's units (divide a translation error by it to quote it).

    Metric sets whose ``meta["eval_thresholds"]`` is ``"relative"`` (:func:`in_percent`) read the
    values as percent of the mean distance from the map cameras to their centroid (``%``). Other
    metric sets keep metres. Sets in an arbitrary SfM gauge (``meta["units"]`` not metres) get
    *relative* thresholds: the metre values are read as multiples of the median distance between
    consecutive map cameras (``meta["scene_scale"]``), so 0.25 means a quarter of a camera step.
    """
    if in_percent(meta):  # temple: % of the map's mean camera-to-centroid distance
        percent = float(meta["scene_scale"]["mean_map_centre_to_centroid_distance"]) / 100
        return tuple((t * percent, r) for t, r in thresholds), "%", percent
    if meta.get("units") == "metres":
        return thresholds, "m", 1.0
    step = float(meta["scene_scale"]["median_consecutive_map_centre_distance"])
    return tuple((t * step, r) for t, r in thresholds), "steps", step


def pose_error(estimate: pycolmap.Rigid3d, truth: pycolmap.Rigid3d) -> tuple[float, float]:
    """``(translation error, rotation error in degrees)`` of two cam_from_world poses; the
    translation error is the distance between camera centres, in the map's units."""
    dt = float(np.linalg.norm(estimate.inverse().translation - truth.inverse().translation))
    dr = rotation_angle_deg(estimate, truth)
    return dt, dr


@dataclass
class EvalSummary:
    total: int
    localized: int
    errors: dict[str, tuple[float, float]]  # per query; failures are (inf, inf)
    median_t: float
    median_r: float
    recalls: dict[tuple[float, float], float]

    def to_dict(self) -> dict:
        return dict(total=self.total, localized=self.localized, median_translation=self.median_t,
                    median_rotation_deg=self.median_r,
                    recall={f"{t}m,{r}deg": v for (t, r), v in self.recalls.items()},
                    errors={k: list(v) for k, v in self.errors.items()})

    def format(self) -> str:
        lines = [f"localized: {self.localized}/{self.total}",
                 f"median error (failures count as infinite): {self.median_t:.4f} / {self.median_r:.4f} deg"]
        lines += [f"within ({t}, {r} deg): {100 * v:.1f}%" for (t, r), v in self.recalls.items()]
        return "\n".join(lines)


def evaluate(estimates: dict[str, pycolmap.Rigid3d], truth: dict[str, pycolmap.Rigid3d],
             thresholds: tuple[tuple[float, float], ...] = DEFAULT_THRESHOLDS) -> EvalSummary:
    """Every ground-truth query counts; a query with no estimate is a miss at every threshold.
    Estimates for names absent from the ground truth are ignored."""
    errors = {n: pose_error(estimates[n], g) if n in estimates else (np.inf, np.inf) for n, g in truth.items()}
    arr = np.array(list(errors.values())).reshape(-1, 2)
    recalls = {(t, r): float(np.mean((arr[:, 0] <= t) & (arr[:, 1] <= r))) if len(arr) else 0.0 for t, r in thresholds}
    median_t, median_r = (float(np.median(arr[:, 0])), float(np.median(arr[:, 1]))) if len(arr) else (np.inf, np.inf)
    localized = sum(1 for n in truth if n in estimates)
    return EvalSummary(len(truth), localized, errors, median_t, median_r, recalls)
