"""Which localized poses are wrong, and what tells them apart (issue 24 item 1).

    python benchmarks/pose_check.py [--sets temple] [--swap] [--splits ring4 half] [--presets ...]
                                    [--data ../shared/data] [--work DIR] [--no-verify]

For each set and preset, the map is built as ``benchmarks/localization.py`` builds it (same folder
names under ``--work``, so maps are shared with it), every query is localized once, and one line per
query gives the reported status, the error ("right": within the first threshold, "WRONG": localized
beyond the second), and the candidate signals of the pose the localizer returned or, for a query
that failed, of the last pose it rejected:

- ``inl`` / ``ratio``: RANSAC inliers and inlier ratio;
- ``hull``: the area of the inlier keypoints' convex hull, in % of the image;
- ``res``: the median reprojection error of the inliers over RANSAC's threshold;
- ``sig``: the 1-sigma camera-centre uncertainty from the pose covariance, in the set's error unit,
  and ``sigR`` the rotation's (degrees);
- ``vis``: the share of the retrieved images' 3D points that project into the query image;
- ``alt``: the inliers of the best pose RANSAC finds among the other correspondences, and ``altR``
  how far (degrees) its rotation is from the pose's (a rival pose);
- ``gpos`` / ``grot``: the camera-centre (set's unit) and rotation (degrees) 1-sigma errors per pixel
  of keypoint noise from the inliers' geometry alone (the pose's dilution of precision), ``dep``
  the inliers' depth spread (std / mean);
- ``mir`` / ``mirR``: the pose refined from its mirror about the inliers' plane: its median inlier
  error over the pose's, and how far it ended (degrees); the "ambiguous pose" test;
- ``lay``: the rotation between the two layers' poses, for a preset with a fallback layer when both
  localize (degrees);
- ``uns``: of ``PoseConf.stability_runs`` LO-RANSAC runs on random subsets of the matches, how many
  ended more than ``max_rival_deg`` from the pose (the "unstable pose" test);
- ``view``: among the retrieved images whose matches alone give LO-RANSAC a pose with at least
  ``min_inliers`` inliers, more than the pose explains of them, the farthest such pose (degrees), and
  ``vown`` its inliers (the rival-image test, ``PoseConf.max_view_rival_deg``).

``--splits`` adds selections of temple's 16-view ring (all 16 poses are known): ``ring4`` (map =
every 4th view, queries the others: 90 deg between map views), ``ring4b`` (the same, shifted by 2),
``half`` (map = views 1-8, queries 9-16: outside the map's arc), ``odd3`` (map = views 1, 4, 7, ...:
67.5 deg). ``--no-verify`` turns the pose check off (``PoseConf.max_median_residual``,
``max_rival_ratio`` and ``stability_runs`` = 0) to see the signals of the poses it rejects;
``--no-stability`` turns off only the "unstable pose" test, ``--no-views`` only the rival-image test.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pycolmap
from scipy.spatial import ConvexHull, QhullError

from vloc.config import PRESETS, PoseConf, get_preset
from vloc.evaluation.metrics import in_percent, pose_error, thresholds_for
from vloc.evaluation.timing import set_root
from vloc.io.cameras import camera_to_fields, read_queries
from vloc.io.datasets import PreparedSet, open_prepared, scene_scale, swap_roles
from vloc.io.images import read_image
from vloc.io.poses import format_pose, read_poses, rotation_angle_deg
from vloc.localization.layer import Layer
from vloc.localization.localizer import Localizer, choose_layer_result
from vloc.localization.pose import estimate_absolute_pose
from vloc.localization.result import LocalizationResult
from vloc.localization.verify import inlier_residuals, mirrored_pose, pose_spread, view_rivals
from vloc.mapping.build import build_map

THRESHOLDS = ((2.0, 2.0), (5.0, 5.0))  # relative sets: % of the scene scale; others: the set's unit
THRESHOLDS_METRIC = ((0.25, 2.0), (0.5, 5.0))
SPLITS = {  # view numbers (1..16) of the map; the other views are queries
    "ring4": [1, 5, 9, 13],
    "ring4b": [3, 7, 11, 15],
    "half": list(range(1, 9)),
    "odd3": [1, 4, 7, 10, 13, 16],
}


def temple_split(temple: PreparedSet, views: list[int], out: Path, name: str) -> PreparedSet:
    """A prepared set from temple's 16 views: map = ``views``, queries = the others."""
    cameras = {q.name: q.camera for q in read_queries(temple.queries)}
    poses = dict(read_poses(temple.gt))
    ref = pycolmap.Reconstruction(str(temple.ref_model))
    for im in ref.images.values():
        cameras[im.name], poses[im.name] = ref.cameras[im.camera_id], im.cam_from_world()
    map_names = [f"templeSR{v:04d}.png" for v in views]
    query_names = sorted(set(cameras) - set(map_names))
    if out.exists():
        shutil.rmtree(out)
    (out / "ref_model").mkdir(parents=True)
    (out / "images").symlink_to(temple.images.resolve(), target_is_directory=True)
    (out / "ref_model" / "cameras.txt").write_text("".join(
        f"{k} {' '.join(camera_to_fields(cameras[n]))}\n" for k, n in enumerate(map_names, 1)))
    (out / "ref_model" / "images.txt").write_text("".join(
        f"{k} {format_pose('', poses[n]).strip()} {k} {n}\n\n" for k, n in enumerate(map_names, 1)))
    (out / "ref_model" / "points3D.txt").write_text("")
    (out / "queries.txt").write_text("".join(f"{n} {' '.join(camera_to_fields(cameras[n]))}\n" for n in query_names))
    (out / "gt_queries.txt").write_text("".join(format_pose(n, poses[n]) + "\n" for n in query_names))
    meta = {k: v for k, v in temple.meta.items() if k not in ("map_images", "query_images", "split_rule")}
    meta.update(name=name, split_rule=f"map = views {views}", n_map=len(map_names), n_query=len(query_names),
                scene_scale=scene_scale([poses[n] for n in map_names]))
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return open_prepared(out)


def hull_percent(points: np.ndarray, camera: pycolmap.Camera) -> float:
    """Convex hull area of ``(N, 2)`` points in % of the image."""
    if len(points) < 3:
        return 0.0
    try:
        return 100.0 * ConvexHull(points).volume / (camera.width * camera.height)
    except QhullError:  # collinear
        return 0.0


def residuals(res: LocalizationResult, xyz: np.ndarray, inl: np.ndarray) -> np.ndarray:
    """Reprojection errors (px) of the inliers under the result's pose and camera."""
    cam = res.cam_from_world * xyz[inl]
    ok = cam[:, 2] > 0
    proj = res.camera.img_from_cam(cam[ok])
    return np.linalg.norm(proj - res.points2D[inl][ok], axis=1)


def visible_share(res: LocalizationResult, layer: Layer) -> float:
    """The share of the retrieved images' 3D points that project into the query image."""
    ids = np.unique(np.concatenate([layer.store.image_point3D_ids(layer.store.row(n)) for n in res.retrieved]))
    ids = ids[ids >= 0]
    if len(ids) == 0:
        return 0.0
    cam = res.cam_from_world * layer.store.points_xyz(ids)
    front = cam[:, 2] > 0
    uv = res.camera.img_from_cam(cam[front])
    inside = (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] < res.camera.width) & (uv[:, 1] < res.camera.height)
    return float(inside.sum()) / len(ids)


def rival(res: LocalizationResult, xyz: np.ndarray, layer: Layer) -> tuple[int, float]:
    """The best pose among the correspondences the pose did not explain: (inliers, degrees apart)."""
    out = ~res.inlier_mask
    if out.sum() < 6:
        return 0, float("nan")
    est = estimate_absolute_pose(res.points2D[out], xyz[out], res.camera, layer.preset.pose, focal_known=True)
    if est is None:
        return 0, float("nan")
    return est.num_inliers, rotation_angle_deg(est.cam_from_world, res.cam_from_world)


def dilution(res: LocalizationResult, xyz: np.ndarray, scale: float) -> tuple[float, float, float]:
    """How well the inliers' geometry fixes the pose: the 1-sigma camera-centre (in the set's unit)
    and rotation (degrees) errors per pixel of keypoint noise, from the Jacobian of the inliers'
    projections (no residuals involved), and the relative spread of the inliers' depths."""
    pts, pose, cam = xyz[res.inlier_mask], res.cam_from_world, res.camera

    def project(delta: np.ndarray) -> np.ndarray:
        turn = pycolmap.Rotation3d(delta[:3]) * pose.rotation
        return cam.img_from_cam(pycolmap.Rigid3d(turn, pose.translation + delta[3:]) * pts).ravel()

    eps = 1e-6
    base = project(np.zeros(6))
    J = np.stack([(project(np.eye(6)[k] * eps) - base) / eps for k in range(6)], axis=1)
    try:
        cov = np.linalg.inv(J.T @ J)
    except np.linalg.LinAlgError:
        return float("inf"), float("inf"), 0.0
    R = pose.rotation.matrix()
    # centre c = -R^T t: dc = -R^T dt (first order, with the rotation's own part via [c]x)
    c = -R.T @ pose.translation
    A = np.hstack([np.array([[0, -c[2], c[1]], [c[2], 0, -c[0]], [-c[1], c[0], 0]]) @ R.T, -R.T])
    pos = float(np.sqrt(max(np.trace(A @ cov @ A.T), 0.0))) / scale
    rot = float(np.rad2deg(np.sqrt(max(np.trace(cov[:3, :3]), 0.0))))
    depth = (pose * pts)[:, 2]
    return pos, rot, float(np.std(depth) / np.mean(depth))


def mirror(res: LocalizationResult, xyz: np.ndarray) -> tuple[float, float]:
    """The pose refined from its mirror about the inliers' plane: its median inlier error over the
    pose's, and degrees apart (``vloc.localization.verify.mirrored_pose``)."""
    inl = res.inlier_mask
    other = mirrored_pose(res.points2D[inl], xyz[inl], res.cam_from_world, res.camera)
    if other is None:
        return float("nan"), float("nan")
    ones = np.ones(int(inl.sum()), bool)
    ratio = np.median(inlier_residuals(res.points2D[inl], xyz[inl], ones, other, res.camera)) / max(
        np.median(inlier_residuals(res.points2D[inl], xyz[inl], ones, res.cam_from_world, res.camera)), 1e-9)
    return float(ratio), rotation_angle_deg(other, res.cam_from_world)


def signals(res: LocalizationResult, layer: Layer, scale: float) -> dict[str, float]:
    """The candidate signals of ``res``'s pose (see the module docstring)."""
    if res.cam_from_world is None or res.points2D is None:
        return {}
    xyz = layer.store.points_xyz(res.point3D_ids)
    inl = res.inlier_mask
    unc = res.uncertainty() or {"position_sigma": float("nan"), "rotation_sigma_deg": float("nan")}
    alt, alt_deg = rival(res, xyz, layer)
    gpos, grot, depth = dilution(res, xyz, scale)
    mir, mir_deg = mirror(res, xyz)
    pose_conf = layer.preset.pose
    conf = dataclasses.replace(pose_conf, stability_runs=pose_conf.stability_runs or 20,
                               max_view_rival_deg=pose_conf.max_view_rival_deg or PoseConf.max_view_rival_deg)
    uns = int(np.sum(pose_spread(res.points2D, xyz, res.cam_from_world, res.camera, conf) > conf.max_rival_deg))
    groups = list(layer.image_groups(res.point3D_ids, [layer.store.row(n) for n in res.retrieved]).values())
    rivals = [r for r in view_rivals(res.points2D, xyz, groups, res.cam_from_world, res.camera, conf) if r[0] > r[1]]
    view, vown = max(((r[2], r[0]) for r in rivals), default=(float("nan"), 0))
    return dict(uns=uns, view=view, vown=vown, gpos=gpos, grot=grot,
                depth=depth, mir=mir, mirR=mir_deg, inl=res.num_inliers,
                ratio=res.inlier_ratio, hull=hull_percent(res.points2D[inl], res.camera),
                res=float(np.median(residuals(res, xyz, inl))) / layer.preset.pose.max_error_px,
                sig=unc["position_sigma"] / scale, sigR=unc["rotation_sigma_deg"],
                vis=visible_share(res, layer), alt=alt, altR=alt_deg)


def layer_results(localizer: Localizer, image: Path, camera: pycolmap.Camera, name: str) -> list[LocalizationResult]:
    """Each layer's own result (a layer's pose is kept only where the layer accepts it); the map's
    layer, then the fallback layer when the preset has one and the map layer is weak or failed."""
    array = read_image(image)
    out = []
    for layer in localizer.layers:
        raw = localizer._global_models[layer.global_conf](array)  # noqa: SLF001 (a diagnostic)
        out.append(layer.localize(array, camera, "given", name, raw, None))
    return out


def reported(localizer: Localizer, layers: list[LocalizationResult]) -> LocalizationResult:
    """What ``Localizer.localize`` reports from these layer results (its rule, without running twice)."""
    first = layers[0]
    if len(layers) == 1 or (first.success and first.num_inliers >= localizer.preset.fallback.below_inliers):
        return first
    return choose_layer_result(first, layers[1], localizer.preset.fallback)


def load_localizer(ds: PreparedSet, preset_name: str, work: Path) -> Localizer:
    """The preset's map of ``ds`` under ``work`` (named as ``benchmarks/localization.py`` names it),
    built at the set's known poses when it is not there, loaded."""
    preset = get_preset(preset_name)
    layer_tag = f"+{preset.fallback.preset}" if preset.fallback.preset else ""
    map_dir = work / f"{ds.name}-{Path(preset.features_file).stem}{layer_tag}"
    if not map_dir.exists():
        build_map(ds.images, map_dir, preset, reference=ds.ref_model)
    return Localizer.load(map_dir, preset)


def check_set(ds: PreparedSet, preset_name: str, work: Path, verify: bool, stability: bool = True,
              views: bool = True) -> list[dict]:
    """One row per query: status, errors, verdict and signals."""
    localizer = load_localizer(ds, preset_name, work)
    off = {} if verify else dict(max_median_residual=0.0, max_rival_ratio=0.0)
    off.update({} if verify and stability else dict(stability_runs=0))
    off.update({} if verify and views else dict(max_view_rival_deg=0.0))
    for layer in localizer.layers:
        layer.preset = dataclasses.replace(layer.preset, pose=dataclasses.replace(layer.preset.pose, **off))
    thresholds, unit, unit_length = thresholds_for(ds.meta, THRESHOLDS if in_percent(ds.meta) else THRESHOLDS_METRIC)
    gt = read_poses(ds.gt)
    rows = []
    for q in read_queries(ds.queries):
        layers = layer_results(localizer, ds.images / q.name, q.camera, q.name)
        res = reported(localizer, layers)
        pose = res.cam_from_world or next((r.cam_from_world for r in layers if r.cam_from_world is not None), None)
        dt, dr = pose_error(pose, gt[q.name]) if pose is not None else (float("inf"), float("inf"))
        verdict = _verdict(dt, dr, thresholds) if pose is not None else "-"
        dt /= unit_length
        shown = res if res.cam_from_world is not None else next(
            (r for r in layers if r.cam_from_world is not None), res)
        shown_layer = localizer.fallback if localizer.fallback and shown.layer == localizer.fallback.preset.name \
            else localizer.layer
        both = [r for r in layers if r.success]
        lay = rotation_angle_deg(both[0].cam_from_world, both[1].cam_from_world) if len(both) == 2 else float("nan")
        rows.append(dict(set=ds.name, preset=preset_name, query=q.name, status="loc" if res.success else "fail",
                         layer=shown.layer, dt=dt, dr=dr, unit=unit, verdict=verdict, lay=lay, reason=res.reason,
                         **signals(shown, shown_layer, unit_length)))
    return rows


def _verdict(dt: float, dr: float, thresholds: tuple[tuple[float, float], ...]) -> str:
    if dt <= thresholds[0][0] and dr <= thresholds[0][1]:
        return "right"
    return "WRONG" if dt > thresholds[-1][0] or dr > thresholds[-1][1] else "loose"


def print_rows(rows: list[dict]) -> None:
    head = (f"{'set':<16}{'preset':<10}{'query':<26}{'status':<6}{'layer':<9}{'error':>17} {'verdict':<6}"
            f"{'inl':>5}{'ratio':>6}{'hull':>6}{'res':>6}{'sig':>7}{'sigR':>6}{'vis':>6}{'alt':>5}{'altR':>6}"
            f"{'lay':>6}")
    print(head)
    for r in rows:
        err = f"{r['dt']:.2f}{r['unit']}/{r['dr']:.1f}°" if np.isfinite(r["dt"]) else "-"
        sig = "".join(f"{r.get(k, float('nan')):>{w}.{p}f}" for k, w, p in (
            ("inl", 5, 0), ("ratio", 6, 2), ("hull", 6, 1), ("res", 6, 2), ("sig", 7, 2), ("sigR", 6, 2),
            ("vis", 6, 2), ("alt", 5, 0), ("altR", 6, 1), ("lay", 6, 1), ("gpos", 7, 3), ("grot", 7, 3),
            ("depth", 6, 3), ("mir", 7, 2), ("mirR", 6, 1), ("uns", 4, 0), ("view", 6, 1), ("vown", 5, 0)))
        print(f"{r['set']:<16}{r['preset']:<10}{r['query'][-24:]:<26}{r['status']:<6}{r['layer']:<9}{err:>17} "
              f"{r['verdict']:<6}{sig}  {r['reason'][:70]}")


def summary(rows: list[dict]) -> None:
    print(f"\n{'set':<16}{'preset':<10}{'n':>4}{'loc':>5}{'right':>6}{'loose':>6}{'wrong':>6}")
    for key in dict.fromkeys((r["set"], r["preset"]) for r in rows):
        sel = [r for r in rows if (r["set"], r["preset"]) == key]
        loc = [r for r in sel if r["status"] == "loc"]
        count = {v: sum(r["verdict"] == v for r in loc) for v in ("right", "loose", "WRONG")}
        print(f"{key[0]:<16}{key[1]:<10}{len(sel):>4}{len(loc):>5}{count['right']:>6}{count['loose']:>6}"
              f"{count['WRONG']:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=sorted(PRESETS), choices=sorted(PRESETS))
    parser.add_argument("--sets", nargs="*", default=["temple"])
    parser.add_argument("--swap", action="store_true", help="also each set with map and queries exchanged")
    parser.add_argument("--splits", nargs="*", default=[], choices=sorted(SPLITS))
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--work", type=Path, required=True, help="maps are kept here and reused")
    parser.add_argument("--no-verify", action="store_true",
                        help="turn the pose check off (PoseConf.max_median_residual = max_rival_ratio = "
                        "stability_runs = max_view_rival_deg = 0)")
    parser.add_argument("--no-stability", action="store_true",
                        help="turn off only the unstable-pose test (PoseConf.stability_runs = 0)")
    parser.add_argument("--no-views", action="store_true",
                        help="turn off only the rival-image test (PoseConf.max_view_rival_deg = 0)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    sets = []
    for name in args.sets:
        ds = open_prepared(set_root(name, args.data, args.work))
        sets.append(ds)
        if args.swap:
            sets.append(swap_roles(ds, args.work / f"{ds.root.name}-swapped"))
    temple = open_prepared(args.data / "prepared" / "temple")
    sets += [temple_split(temple, SPLITS[s], args.work / f"temple-{s}", f"temple-{s}") for s in args.splits]
    rows = []
    for ds in sets:
        for preset in args.presets:
            new = check_set(ds, preset, args.work, not args.no_verify, not args.no_stability, not args.no_views)
            print_rows(new)
            rows += new
    print()
    print_rows(rows)
    summary(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
