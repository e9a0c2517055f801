"""Localize a list of queries from files and write the pose list and its JSON log."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm import tqdm

from vloc.io.cameras import Query
from vloc.io.files import write_text_atomic
from vloc.io.poses import write_poses
from vloc.localization.localizer import LocalizationResult, Localizer

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
