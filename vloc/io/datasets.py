"""The interchange layout ``prepared/NAME/`` (images/, ref_model/, queries.txt, gt_queries.txt)."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PreparedSet:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def ref_model(self) -> Path:
        return self.root / "ref_model"

    @property
    def queries(self) -> Path:
        return self.root / "queries.txt"

    @property
    def gt(self) -> Path:
        return self.root / "gt_queries.txt"

    @property
    def meta(self) -> dict:
        path = self.root / "meta.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def open_prepared(root: Path | str) -> PreparedSet:
    ds = PreparedSet(Path(root))
    missing = [p.name for p in (ds.images, ds.ref_model, ds.queries) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{root}: not a prepared set, missing {missing}")
    return ds


def swap_roles(ds: PreparedSet, out: Path | str) -> PreparedSet:
    """Write the prepared set ``ds`` with its map and query images exchanged to ``out`` and open it.

    The queries (with their intrinsics and ground-truth poses) become the map images of a new
    ``ref_model``, one camera per query; the map images become the queries, each with its
    ref_model camera. ``images/`` is linked, not copied. A held-out check of the same kind of
    views: what was tuned on one selection is measured on the other. Needs ``gt_queries.txt``.
    """
    import pycolmap

    from vloc.io.cameras import camera_to_fields, read_queries
    from vloc.io.poses import format_pose, read_poses

    if not ds.gt.is_file():
        raise FileNotFoundError(f"{ds.gt}: swapping map and queries needs the queries' ground-truth poses")
    queries = read_queries(ds.queries)
    gt = read_poses(ds.gt)
    unknown = [q.name for q in queries if q.camera is None or q.name not in gt]
    if unknown:
        raise ValueError(f"{ds.queries}: queries without intrinsics or ground truth cannot become map images: {unknown}")
    ref = pycolmap.Reconstruction(str(ds.ref_model))
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "ref_model").mkdir(parents=True)
    (out / "images").symlink_to(ds.images.resolve(), target_is_directory=True)
    (out / "ref_model" / "cameras.txt").write_text("# CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]\n" + "".join(
        f"{k} {' '.join(camera_to_fields(q.camera))}\n" for k, q in enumerate(queries, 1)))
    (out / "ref_model" / "images.txt").write_text(
        "# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME\n# POINTS2D[] as (X, Y, POINT3D_ID)\n"
        + "".join(f"{k} {format_pose('', gt[q.name]).strip()} {k} {q.name}\n\n" for k, q in enumerate(queries, 1)))
    (out / "ref_model" / "points3D.txt").write_text("# POINT3D_ID X Y Z R G B ERROR TRACK[]\n")
    images = sorted(ref.images.values(), key=lambda im: im.name)
    (out / "queries.txt").write_text("".join(
        f"{im.name} {' '.join(camera_to_fields(ref.cameras[im.camera_id]))}\n" for im in images))
    (out / "gt_queries.txt").write_text("".join(format_pose(im.name, im.cam_from_world()) + "\n" for im in images))
    meta = {k: v for k, v in ds.meta.items() if k not in ("map_images", "query_images", "split_rule")}
    meta.update(name=f"{ds.name}-swapped", swapped_from=str(ds.root), n_map=len(queries), n_query=len(images),
                scene_scale=scene_scale([gt[q.name] for q in queries]))
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return open_prepared(out)


def scene_scale(cam_from_world: list) -> dict[str, float]:
    """The map cameras' scale as ``meta.json`` records it (the unit of relative thresholds):
    mean distance of the camera centres to their centroid, median distance between consecutive ones."""
    import numpy as np

    centres = np.array([pose.inverse().translation for pose in cam_from_world])
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    return {"mean_map_centre_to_centroid_distance": float(np.linalg.norm(centres - centres.mean(0), axis=1).mean()),
            "median_consecutive_map_centre_distance": float(np.median(steps)) if len(steps) else 0.0}
