"""SfM from scratch against ground truth, vloc beside COLMAP's own pipeline (issue 25).

    python benchmarks/sfm.py --frames 250 [--pipelines vloc colmap-incremental colmap-global]
                             [--camera "PINHOLE 640 480 525 525 320 240" ""] [--colmap-timeout 3600]
    python benchmarks/sfm.py --set lund --pipelines vloc vloc-global

Images: ``--frames N`` frames of ``7scenes_seq1000`` (true ground truth, metres; N <= 950 takes
the map frames spread over the sequence as the other benchmarks do, 1000 takes every frame) or
a prepared set with a pseudo ground truth (``--set``, default lund).

Pipelines, each in its own process (so each has its own peak RSS, and a pipeline past
``--colmap-timeout`` seconds is stopped and reported as such):
- ``vloc``: ``vloc map build`` with default options (``--mapper auto``); ``vloc-incremental`` and
  ``vloc-global`` name the mapper.
- ``colmap-incremental`` / ``colmap-global``: what a COLMAP user runs, through pycolmap with its
  defaults (one process: extraction and matching once, each mapper on a copy of the database;
  both rows show the shared stages' seconds): SIFT extraction (one shared camera, SIMPLE_RADIAL,
  as for a video), sequential
  matching (10 neighbours, quadratic overlap; loop detection needs a vocabulary tree, a download,
  so it is off) with its geometric verification, then ``incremental_mapping`` or
  ``global_mapping``. With ``--camera``, its model and parameters are given and not refined.

Columns: seconds by stage (vloc: extract+pairs / match / verify / sfm / write; COLMAP: extract /
match+verify / map), registered images, 3D points, mean reprojection error, camera-centre
error after a similarity alignment (Umeyama; median and p90, in the ground truth's units), the
rotation error after that alignment (median degrees), focal length, peak RSS. ``--mapper-log``
also turns on pycolmap's log in the vloc processes and reads the mapper's time out of it
(global BAs: count and seconds; local BAs; pose refinement; the rest: registration,
triangulation, filtering).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pycolmap

PIPELINES = ("vloc", "vloc-incremental", "vloc-global", "colmap-incremental", "colmap-global")


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity ``dst ~ s R src + t`` for ``(N, 3)`` point sets."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    u, d, vt = np.linalg.svd(xd.T @ xs / len(src))
    sign = np.diag([1, 1, np.sign(np.linalg.det(u @ vt))])
    r = u @ sign @ vt
    s = np.trace(np.diag(d) @ sign) / xs.var(0).sum()
    return s, r, mu_d - s * r @ mu_s


def compare(rec: pycolmap.Reconstruction, gt: pycolmap.Reconstruction) -> dict:
    """Accuracy of ``rec``'s registered images against ``gt`` (same names) after a similarity."""
    gt_images = {im.name: im for im in gt.images.values() if im.has_pose}
    names = [im.name for im in rec.images.values() if im.has_pose and im.name in gt_images]
    ours = np.array([rec.find_image_with_name(n).projection_center() for n in names])
    theirs = np.array([gt_images[n].projection_center() for n in names])
    s, r, t = umeyama(ours, theirs)
    err = np.linalg.norm((s * (r @ ours.T)).T + t - theirs, axis=1)
    # world rotation of ours mapped into the ground truth's frame: R_cam_from_gt = R_cam_from_ours R^T
    rot = []
    for n in names:
        est = rec.find_image_with_name(n).cam_from_world().rotation.matrix() @ r.T
        true = gt_images[n].cam_from_world().rotation.matrix()
        cos = (np.trace(est @ true.T) - 1) / 2
        rot.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    return dict(registered=len(names), points=rec.num_points3D(), reproj=rec.compute_mean_reprojection_error(),
                centre_median=float(np.median(err)), centre_p90=float(np.percentile(err, 90)),
                rot_median=float(np.median(rot)),
                focal=float(np.median([c.mean_focal_length() for c in rec.cameras.values()])))


def run_vloc(pipeline: str, images: Path, image_list: Path | None, camera: str, out: Path) -> tuple[dict, Path]:
    from vloc.config import DEFAULT_PRESET, get_preset
    from vloc.io.cameras import camera_from_text
    from vloc.mapping.build import build_map

    mapper = {"vloc": "auto", "vloc-incremental": "incremental", "vloc-global": "global"}[pipeline]
    manifest = build_map(images, out / "map", get_preset(DEFAULT_PRESET), image_list=image_list, mapper=mapper,
                         cameras=camera_from_text(camera, "--camera") if camera else None)
    s = manifest.build_seconds
    stages = {"extract": s["extract"] + s["pairs"], "match": s["match"], "verify": s["verify"], "map": s["sfm"],
              "write": s["write"]}
    return stages, out / "map" / "model"


def run_colmap(images: Path, names: list[str], camera: str, out: Path, mappers: list[str]):
    """COLMAP's pipeline: extraction and sequential matching once, then each mapper on a copy of the
    database; yields (pipeline, stages, model directory) as each mapper ends."""
    database, stages = out / "database.db", {}
    reader = pycolmap.ImageReaderOptions()
    if camera:
        model, _, _, *params = camera.split()
        reader.camera_model, reader.camera_params = model, ",".join(params)
    t = time.perf_counter()
    pycolmap.extract_features(database, images, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, device=pycolmap.Device.cpu)
    stages["extract"], t = time.perf_counter() - t, time.perf_counter()
    pycolmap.match_sequential(database, device=pycolmap.Device.cpu)
    stages["match"] = time.perf_counter() - t
    for mapper in mappers:
        work = out / mapper
        work.mkdir()
        shutil.copy(database, work / "database.db")
        t = time.perf_counter()
        if mapper == "colmap-incremental":
            options = pycolmap.IncrementalPipelineOptions()
            if camera:
                options.ba_refine_focal_length = options.ba_refine_extra_params = False
            models = pycolmap.incremental_mapping(work / "database.db", images, work, options)
        else:
            options = pycolmap.GlobalPipelineOptions()
            if camera:
                ba = options.mapper.bundle_adjustment
                ba.refine_focal_length = ba.refine_extra_params = False
            models = pycolmap.global_mapping(work / "database.db", images, work, options)
        seconds = time.perf_counter() - t
        if not models:
            raise RuntimeError(f"{mapper}: no model")
        best = max(models.values(), key=lambda m: m.num_reg_images())
        (work / "best").mkdir()
        best.write(work / "best")
        yield mapper, {**stages, "map": seconds}, work / "best"


def mapper_breakdown(log: str) -> dict:
    """Seconds of the incremental mapper's parts, from pycolmap's log (INFO, verbose 1)."""
    stamp = re.compile(r"I(\d{8} \d\d:\d\d:\d\d\.\d+) +\d+ [\w.]+:\d+\]")
    # (a progress bar's last refresh can precede a log line on the same line: cut it off)
    lines = [line[m.start():] if (m := stamp.search(line)) else line for line in log.splitlines()]
    ts = lambda line: datetime.strptime(stamp.match(line).group(1), "%Y%m%d %H:%M:%S.%f")  # noqa: E731
    out = {"global_ba_runs": 0, "global_ba_s": 0.0, "local_ba_s": 0.0, "pose_s": 0.0}
    kind, start, end = "local", None, None
    for i, line in enumerate(lines):
        if not stamp.match(line):
            continue
        if "Loading database" in line and start is None:
            start = ts(line)
        end = ts(line)
        if "Global bundle adjustment" in line:
            kind = "global"
            out["global_ba_runs"] += 1
        elif "Registering image" in line:
            kind = "local"
        if line.endswith(("Bundle adjustment report", "Pose refinement report")):
            seconds = float(lines[i + 4].split(":")[1].split("[")[0])
            key = "pose_s" if line.endswith("Pose refinement report") else f"{kind}_ba_s"
            out[key] += seconds
    if start is not None:
        out["mapper_s"] = (end - start).total_seconds()
    return out


def one(args: argparse.Namespace) -> None:
    """Child process: one vloc pipeline, or COLMAP's with its mappers; prints a JSON line per model."""
    if args.mapper_log:
        pycolmap.logging.logtostderr, pycolmap.logging.verbose_level = True, 1
        pycolmap.logging.minloglevel = 0
    else:
        pycolmap.logging.minloglevel = 2
    names = args.names.read_text().split()
    gt = pycolmap.Reconstruction(str(args.gt))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t = time.perf_counter()
        if args.one[0].startswith("vloc"):
            runs = [(args.one[0], *run_vloc(args.one[0], args.images, args.names, args.camera, Path(tmp)))]
        else:
            runs = run_colmap(args.images, names, args.camera, Path(tmp), args.one)
        for pipeline, stages, model in runs:
            result = compare(pycolmap.Reconstruction(str(model)), gt)
            rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
            print("RESULT " + json.dumps({"pipeline": pipeline, "stages": stages, "total": sum(stages.values()),
                                          "wall": time.perf_counter() - t, "rss_mb": rss / 1024, **result}), flush=True)


def prepare(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, Path, str]:
    """(images, ground-truth model, image list, label)."""
    names = tmp / "images.txt"
    if args.frames:
        from vloc.evaluation.sevenscenes import frame_name, map_frames, write_reference

        frames = list(range(1000)) if args.frames == 1000 else map_frames(args.frames)
        write_reference(args.data / "7scenes_seq1000", frames, tmp / "gt")
        names.write_text("".join(f"{frame_name(i)}\n" for i in frames))
        return args.data / "7scenes_seq1000", tmp / "gt", names, f"7scenes_seq1000, {len(frames)} frames"
    root = args.data / "prepared" / args.set
    gt = pycolmap.Reconstruction(str(root / "pseudo_gt"))
    names.write_text("".join(f"{im.name}\n" for im in sorted(gt.images.values(), key=lambda im: im.name)))
    return root / "images", root / "pseudo_gt", names, args.set


def row(pipeline: str, camera: str, r: dict | None, note: str = "") -> str:
    label = f"{pipeline}, {'given' if camera else 'not given'}"
    if r is None:
        return f"{label:<30} {note}"
    st = r["stages"]
    stages = "/".join(f"{v:.0f}" for v in st.values())
    extra = ""
    if "mapper" in r:
        m = r["mapper"]
        extra = (f"  mapper {m.get('mapper_s', 0):.0f} s: {m['global_ba_runs']} global BAs {m['global_ba_s']:.0f} s, "
                 f"local BA {m['local_ba_s']:.0f} s, pose {m['pose_s']:.0f} s")
    return (f"{label:<30}{r['total']:>8.1f}  {stages:<22}{r['registered']:>6}{r['points']:>9}{r['reproj']:>7.2f}"
            f"{r['centre_median']:>9.4f}{r['centre_p90']:>9.4f}{r['rot_median']:>7.2f}{r['focal']:>8.1f}"
            f"{r['rss_mb']:>8.0f}{extra}")


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="lund")
    parser.add_argument("--frames", type=int, help="SfM on this many frames of 7scenes_seq1000 instead of --set")
    parser.add_argument("--pipelines", nargs="+", default=["vloc", "colmap-incremental", "colmap-global"],
                        choices=PIPELINES)
    parser.add_argument("--camera", nargs="+", default=[""], help="intrinsics given to SfM ('' = not given)")
    parser.add_argument("--colmap-timeout", type=float, default=3600.0, help="seconds before a pipeline is stopped")
    parser.add_argument("--mapper-log", action="store_true", help="time the incremental mapper's parts (vloc rows)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    parser.add_argument("--tmp", type=Path, default=None, help="where the pipelines work (default: the system's)")
    parser.add_argument("--one", nargs="+", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--images", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--names", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--gt", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.camera = args.camera[0]
        return one(args)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        images, gt, names, label = prepare(args, Path(tmp))
        print(f"\n{label}: {len(names.read_text().split())} images; {os.cpu_count()} CPUs; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"{'pipeline, intrinsics':<30}{'total s':>8}  {'stages s':<22}{'reg':>6}{'points':>9}{'reproj':>7}"
              f"{'c. med':>9}{'c. p90':>9}{'rot °':>7}{'focal':>8}{'RSS MB':>8}")
        colmap = [p for p in args.pipelines if p.startswith("colmap")]
        groups = [[p] for p in args.pipelines if p.startswith("vloc")] + ([colmap] if colmap else [])
        for camera in args.camera:
            for group in groups:
                load = os.getloadavg()[0]
                cmd = [sys.executable, __file__, "--one", *group, "--images", str(images), "--names", str(names),
                       "--gt", str(gt), "--camera", camera, "--data", str(args.data)]
                cmd += ["--mapper-log"] if args.mapper_log and group[0].startswith("vloc") else []
                cmd += ["--tmp", str(args.tmp)] if args.tmp else []
                stopped = ""
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.colmap_timeout)
                    stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
                except subprocess.TimeoutExpired as exc:
                    stdout, stderr, code = _text(exc.stdout), _text(exc.stderr), None
                    stopped = f"stopped after {args.colmap_timeout:.0f} s (load {load:.1f} at its start)"
                results = {r["pipeline"]: r for r in (json.loads(line[len("RESULT "):])
                                                      for line in stdout.splitlines() if line.startswith("RESULT "))}
                for pipeline in group:
                    result = results.get(pipeline)
                    if result is None:
                        print(row(pipeline, camera, None, stopped or f"failed ({code}): {stderr[-500:]}"), flush=True)
                        continue
                    if "--mapper-log" in cmd:
                        result["mapper"] = mapper_breakdown(stderr)
                    print(row(pipeline, camera, result) + f"  load {load:.1f}", flush=True)
        print("stages: vloc extract+pairs/match/verify/map/write, COLMAP extract/match+verify/map; centre errors in "
              "the ground truth's units after a similarity; rot: rotation error after it")


if __name__ == "__main__":
    main()
