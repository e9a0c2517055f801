"""Localize a list of queries from files and write the pose list and its JSON log."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm import tqdm

from vloc.io.cameras import Query
from vloc.io.files import write_text_atomic
from vloc.io.poses import write_poses
from vloc.io.rigs import RigCapture, RigLayout
from vloc.localization.localizer import LocalizationResult, Localizer
from vloc.localization.rig import RigLocalizationResult

logger = logging.getLogger(__name__)


def log_path_for(poses: Path) -> Path:
    """The JSON log beside a pose list: ``poses.txt`` -> ``poses.json``."""
    return poses.with_suffix(".json") if poses.suffix != ".json" else poses.with_suffix(".log.json")


def localize_queries(
    localizer: Localizer, queries: list[Query], image_dir: Path, out: Path,
) -> list[LocalizationResult]:
    results = []
    for query in tqdm(queries, desc="localize", unit="query"):
        result = localizer.localize(image_dir / query.name, query.camera, name=query.name)
        if result.success:
            logger.info("%s: localized, %d/%d inliers (preset %s), intrinsics %s", query.name, result.num_inliers,
                        result.num_matches, result.layer, result.intrinsics_source)
        else:
            logger.warning("%s: failed: %s", query.name, result.reason)
        results.append(result)
    write_poses(out, {r.name: r.cam_from_world for r in results if r.success})
    log = dict(map=str(localizer.map_dir.resolve()), map_created=localizer.manifest.created,
               preset=localizer.preset.name, images=str(Path(image_dir).resolve()),
               localized=sum(r.success for r in results), total=len(results),
               queries=[r.to_dict(details=True) for r in results])
    write_text_atomic(log_path_for(out), json.dumps(log, indent=1))
    return results


def rig_queries(layout: RigLayout, queries: list[Query],
                where: dict[str, str]) -> list[tuple[RigCapture, dict[str, Query]]]:
    """The queries grouped into rig captures: (capture, camera name -> query). Raises with
    the query list's file and line for a capture without an image of one of its rig's cameras,
    and for a query in no capture."""
    by_name = {q.name: q for q in queries}
    grouped, seen = [], set()
    for capture in layout.captures:
        rig = layout.rigs[capture.rig]
        first = where[next(iter(capture.images.values()))]
        missing = [c for c in rig.sensors if c not in capture.images]
        if missing:
            raise ValueError(f"{first}: rig capture {capture.key!r} of {rig.name!r} has no image from camera(s) "
                             f"{missing} ({layout.source})")
        grouped.append((capture, {c: by_name[n] for c, n in capture.images.items()}))
        seen.update(capture.images.values())
    alone = [q.name for q in queries if q.name not in seen]
    if alone:
        raise ValueError(f"{where[alone[0]]}: {alone[0]} is in no capture of {layout.source}")
    return grouped


def localize_rig_queries(localizer: Localizer, layout: RigLayout, queries: list[Query], where: dict[str, str],
                         image_dir: Path, out: Path) -> list[RigLocalizationResult]:
    """``vloc localize --rig``: each capture localized as one rig; the pose list holds every
    camera's pose (image name -> cam_from_world), the log each rig's result."""
    captures = rig_queries(layout, queries, where)
    results = []
    for capture, members in tqdm(captures, desc="localize rig", unit="capture"):
        key, rig = f"{capture.rig}/{capture.key}", layout.rigs[capture.rig]
        result = localizer.localize_rig({c: image_dir / q.name for c, q in members.items()}, rig,
                                        {c: q.camera for c, q in members.items() if q.camera is not None}, name=key)
        for camera, res in result.cameras.items():
            res.name = members[camera].name
        if result.success:
            logger.info("%s: localized, %d/%d inliers over %d cameras", key, result.num_inliers, result.num_matches,
                        len(members))
        else:
            logger.warning("%s: failed: %s", key, result.reason)
        results.append(result)
    write_poses(out, {r.name: r.cam_from_world for rig in results for r in rig.cameras.values() if r.success})
    log = dict(map=str(localizer.map_dir.resolve()), map_created=localizer.manifest.created,
               preset=localizer.preset.name, images=str(Path(image_dir).resolve()), rig=layout.to_dict(),
               localized=sum(r.success for r in results), total=len(results),
               captures=[r.to_dict() for r in results])
    write_text_atomic(log_path_for(out), json.dumps(log, indent=1))
    return results
