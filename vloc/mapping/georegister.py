"""Geo-registration: the similarity that takes a model's camera centres onto their GPS positions.

The positions are metres in a local east-north-up frame (``vloc.io.gps.EnuFrame``). The fit is
pycolmap's LO-RANSAC over 3D similarities, so a few wrong fixes (a phone's first fix, a
multipath jump) are named as outliers instead of bending the map; the residuals of every image
are kept for reports.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pycolmap

from vloc.io.gps import EnuFrame, GpsFix
from vloc.mapping.manifest import GeoInfo
from vloc.mapping.mapper import RANDOM_SEED

logger = logging.getLogger(__name__)

MIN_GPS_IMAGES = 3  # a similarity has 7 degrees of freedom: 3 non-collinear positions
GPS_MAX_ERROR_M = 10.0  # a position farther than this from the fitted map is an outlier (phone GPS: ~5 m)
GPS_DEFAULT_SIGMA_M = 5.0  # horizontal 1-sigma of a fix that states none (EXIF): a phone's typical error
GPS_VERTICAL_FACTOR = 2.0  # GNSS heights are about twice as uncertain as horizontal positions


@dataclass(frozen=True)
class GeoFit:
    """``enu_from_model`` and, per image name, the distance (m) between its mapped centre and its
    GPS position; ``outliers`` are the names beyond the fit's ``max_error_m``."""

    enu_from_model: pycolmap.Sim3d
    residuals_m: dict[str, float]
    outliers: list[str]
    max_error_m: float

    @property
    def inliers(self) -> list[str]:
        outliers = set(self.outliers)
        return [n for n in self.residuals_m if n not in outliers]

    def median_residual_m(self) -> float:
        return float(np.median([self.residuals_m[n] for n in self.inliers]))


def position_priors(fixes: dict[str, GpsFix], frame: EnuFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each fix as an SfM pose prior: its position in ``frame`` (metres) and a diagonal covariance
    from its horizontal sigma (``GPS_DEFAULT_SIGMA_M`` when it states none; vertical
    ``GPS_VERTICAL_FACTOR`` times that)."""
    names = list(fixes)
    enu = frame.fixes_to_enu([fixes[n] for n in names])
    priors = {}
    for name, position in zip(names, enu, strict=True):
        sigma = fixes[name].horizontal_sigma or GPS_DEFAULT_SIGMA_M
        priors[name] = (position, np.diag([sigma**2, sigma**2, (GPS_VERTICAL_FACTOR * sigma) ** 2]))
    return priors


def fit_to_gps(centres: dict[str, np.ndarray], enu: dict[str, np.ndarray], *,
               max_error_m: float = GPS_MAX_ERROR_M) -> GeoFit:
    """Fit ``enu ~ s R centre + t`` over the names both dicts hold (camera centres in the model's
    frame, GPS positions in metres). Raises ``ValueError`` when fewer than ``MIN_GPS_IMAGES`` images
    have both, when they are (nearly) collinear, or when no similarity has 3 inliers."""
    if max_error_m <= 0:
        raise ValueError(f"max_error_m must be positive, got {max_error_m}")
    names = sorted(set(centres) & set(enu))
    if len(names) < MIN_GPS_IMAGES:
        raise ValueError(f"{len(names)} registered images have a GPS position; geo-registration needs at least "
                         f"{MIN_GPS_IMAGES}")
    src = np.array([centres[n] for n in names], dtype=np.float64).reshape(-1, 3)
    tgt = np.array([enu[n] for n in names], dtype=np.float64).reshape(-1, 3)
    spread = np.linalg.svd(tgt - tgt.mean(0), compute_uv=False)
    if spread[1] < 1e-3 * max(spread[0], 1e-12):
        raise ValueError(f"the {len(names)} GPS positions lie on a line: they fix no orientation about it")
    options = pycolmap.RANSACOptions()
    options.max_error = max_error_m
    options.random_seed = RANDOM_SEED
    found = pycolmap.estimate_sim3d_robust(src, tgt, options)
    if found is None or int(found["num_inliers"]) < MIN_GPS_IMAGES:
        raise ValueError(f"no similarity puts {MIN_GPS_IMAGES} or more of the {len(names)} camera centres within "
                         f"{max_error_m} m of their GPS positions")
    sim, residuals = _refit_on_inliers(found["tgt_from_src"], src, tgt, max_error_m)
    outliers = [n for n, r in zip(names, residuals, strict=True) if r > max_error_m]
    if outliers:
        logger.info("GPS fit: %d of %d positions beyond %.1f m, left out: %s", len(outliers), len(names),
                    max_error_m, ", ".join(outliers))
    return GeoFit(sim, {n: float(r) for n, r in zip(names, residuals, strict=True)}, outliers, max_error_m)


def _residuals(sim: pycolmap.Sim3d, src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    return np.linalg.norm(src @ (sim.scale * sim.rotation.matrix()).T + sim.translation - tgt, axis=1)


def _refit_on_inliers(sim: pycolmap.Sim3d, src: np.ndarray, tgt: np.ndarray, max_error_m: float,
                      max_rounds: int = 10) -> tuple[pycolmap.Sim3d, np.ndarray]:
    """The least-squares similarity over RANSAC's inliers; the inliers taken again under it, and
    refitted, until they stay the same. pycolmap's LO-RANSAC returns its best-scoring model, not
    the least-squares fit of its consensus set: on lund's 29 photos (all within 10 m of it) that
    model left a median residual of 5.08 m, the least-squares fit 4.44 m (docs/benchmarks.md)."""
    residuals = _residuals(sim, src, tgt)
    inliers = residuals <= max_error_m
    for _ in range(max_rounds):
        refit = pycolmap.estimate_sim3d(src[inliers], tgt[inliers])
        if refit is None:
            break
        sim, residuals = refit, _residuals(refit, src, tgt)
        now = residuals <= max_error_m
        if np.array_equal(now, inliers) or now.sum() < MIN_GPS_IMAGES:
            break
        inliers = now
    return sim, residuals


def georegister(model: pycolmap.Reconstruction, fixes: dict[str, GpsFix], source: str, *,
                max_error_m: float = GPS_MAX_ERROR_M) -> GeoInfo:
    """Move ``model`` (in place) into east-north-up metres about its images' median GPS position,
    by the similarity :func:`fit_to_gps` finds; what the manifest records of it."""
    frame = EnuFrame.around(list(fixes.values()))
    names = list(fixes)
    enu = dict(zip(names, frame.fixes_to_enu([fixes[n] for n in names]), strict=True))
    centres = {im.name: im.projection_center() for im in model.images.values() if im.has_pose}
    fit = fit_to_gps(centres, enu, max_error_m=max_error_m)
    model.transform(fit.enu_from_model)
    median = fit.median_residual_m()
    largest = max(fit.residuals_m[n] for n in fit.inliers)
    logger.info("geo-registered with %d GPS positions (%s): median %.2f m, largest %.2f m, %d outliers",
                len(fit.residuals_m), source, median, largest, len(fit.outliers))
    return GeoInfo(latitude=frame.latitude, longitude=frame.longitude, altitude=frame.altitude, source=source,
                   images_with_gps=len(fit.residuals_m), outliers=fit.outliers, max_error_m=max_error_m,
                   median_residual_m=round(median, 3), max_residual_m=round(largest, 3),
                   scale=float(fit.enu_from_model.scale))
