"""Maps in and out of COLMAP and hloc (issue 27): a round trip through COLMAP keeps a map exactly, a
project made by pycolmap's own pipeline imports and localizes as well as vloc's map of the same
images, hloc's h5 layout imports, and what does not fit is refused by name, leaving no map."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest

from vloc.cli import main
from vloc.evaluation.metrics import pose_error
from vloc.io.cameras import read_queries
from vloc.io.images import read_image
from vloc.io.poses import read_poses
from vloc.localization.localizer import Localizer
from vloc.mapping.interop import export_colmap, import_colmap, import_hloc


def _localize(map_dir: Path, ds, names: list[str] | None = None) -> dict[str, pycolmap.Rigid3d | None]:
    localizer = Localizer.load(map_dir)
    queries = [q for q in read_queries(ds.root / "queries.txt") if names is None or q.name in names]
    out = {}
    for q in queries:
        r = localizer.localize(read_image(ds.images / q.name), q.camera, name=q.name)
        out[q.name] = r.cam_from_world if r.success else None
    return out


def _median_error_cm(poses: dict, ds) -> float:
    truth = read_poses(ds.root / "gt_queries.txt")
    errors = [pose_error(p, truth[n])[0] if p is not None else np.inf for n, p in poses.items()]
    return 100 * float(np.median(errors))


def test_a_map_exported_to_colmap_and_imported_back_is_the_same_map(kitti, kitti_map, tmp_path):
    assert main(["map", "export", str(kitti_map), "--colmap", str(tmp_path / "exact"), "--float-descriptors"]) == 0
    assert main(["map", "import", "colmap", "--model", str(tmp_path / "exact" / "sparse"), "--database",
                 str(tmp_path / "exact" / "database.db"), "--images", str(kitti.images), "--out",
                 str(tmp_path / "back"), "--preset", "sift"]) == 0
    before = pycolmap.Reconstruction(str(kitti_map / "model"))
    after = pycolmap.Reconstruction(str(tmp_path / "back" / "model"))
    assert sorted(im.name for im in after.images.values() if im.has_pose) == \
        sorted(im.name for im in before.images.values() if im.has_pose)
    assert set(after.points3D) == set(before.points3D)
    assert max(np.abs(after.points3D[i].xyz - before.points3D[i].xyz).max() for i in before.points3D) == 0
    original, imported = _localize(kitti_map, kitti), _localize(tmp_path / "back", kitti)
    assert sum(p is not None for p in original.values()) >= 9
    for name, pose in original.items():
        assert (pose is None) == (imported[name] is None)
        if pose is not None:
            assert np.abs(pose.inverse().translation - imported[name].inverse().translation).max() < 1e-6


def test_the_default_export_opens_in_colmaps_mapper(kitti, kitti_map, tmp_path):
    export_colmap(kitti_map, tmp_path / "project")
    db = pycolmap.Database.open(str(tmp_path / "project" / "database.db"))
    try:
        descriptors = db.read_descriptors(db.read_all_images()[0].image_id)
        assert descriptors.type == pycolmap.FeatureExtractorType.SIFT and descriptors.data.dtype == np.uint8
        assert db.num_images() == 10 and db.num_verified_image_pairs() >= 9
    finally:
        db.close()
    (tmp_path / "sfm").mkdir()
    models = pycolmap.incremental_mapping(tmp_path / "project" / "database.db", kitti.images, tmp_path / "sfm")
    assert max(m.num_reg_images() for m in models.values()) == 10
    with pytest.raises(FileExistsError, match="already exists"):
        export_colmap(kitti_map, tmp_path / "project")


@pytest.fixture(scope="module")
def pycolmap_project(seven_small, tmp_path_factory) -> tuple[Path, Path, Path]:
    """pycolmap's own pipeline on the 31 map frames: its SIFT extraction (the set's PINHOLE camera),
    exhaustive matching and the point triangulator at the known poses -> (model, database, work)."""
    ds, names, _ = seven_small
    work = tmp_path_factory.mktemp("pycolmap_project")
    database = work / "database.db"
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model, reader.camera_params = "PINHOLE", "525,525,320,240"
    pycolmap.extract_features(database, ds.images, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, device=pycolmap.Device.cpu)
    pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu)
    db = pycolmap.Database.open(str(database))
    ids = {im.name: im.image_id for im in db.read_all_images()}
    db.close()
    known = work / "known"  # the set's poses of these frames, with the database's image ids
    known.mkdir()
    shutil.copy(ds.ref_model / "cameras.txt", known / "cameras.txt")
    (known / "points3D.txt").write_text("")
    lines = []
    for line in (ds.ref_model / "images.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 10 and not line.startswith("#") and fields[9] in ids:
            lines += [" ".join([str(ids[fields[9]]), *fields[1:]]), ""]
    (known / "images.txt").write_text("\n".join(lines) + "\n")
    (work / "sparse").mkdir()
    pycolmap.triangulate_points(pycolmap.Reconstruction(str(known)), database, ds.images, work / "sparse")
    return work / "sparse", database, work


def test_a_pycolmap_project_imports_and_localizes_as_well_as_vlocs_map(seven_small, pycolmap_project, tmp_path):
    ds, _, vloc_map = seven_small
    model, database, _ = pycolmap_project
    manifest = import_colmap(model, database, ds.images, tmp_path / "imported")
    assert manifest.preset["name"] == "colmap" and manifest.counts.images == 31
    queries = [q.name for q in read_queries(ds.root / "queries.txt") if int(q.name[6:12]) <= 110]
    imported = _localize(tmp_path / "imported", ds, queries)
    built = _localize(vloc_map, ds, queries)
    assert all(p is not None for p in imported.values()) and all(p is not None for p in built.values())
    e_imported, e_built = _median_error_cm(imported, ds), _median_error_cm(built, ds)
    assert e_imported <= 1.1 * e_built + 0.05, (e_imported, e_built)  # within 10 % (0.5 mm of noise)


def _write_hloc_features(path: Path, database: Path) -> None:
    """hloc's layout: a group per image with keypoints (N, 2) whose pixel centres are integers,
    descriptors (D, N) float (hloc's sift: pycolmap's, unit L1-root vectors) and scores (N,)."""
    db = pycolmap.Database.open(str(database))
    try:
        with h5py.File(path, "w") as f:
            for im in db.read_all_images():
                group = f.create_group(im.name)
                keypoints = np.asarray(db.read_keypoints(im.image_id))[:, :2] - 0.5
                desc = np.asarray(db.read_descriptors(im.image_id).data, np.float32)
                desc /= np.linalg.norm(desc, axis=1, keepdims=True)
                group.create_dataset("keypoints", data=keypoints.astype(np.float32))
                group.create_dataset("descriptors", data=desc.T.astype(np.float16))
                group.create_dataset("scores", data=np.ones(len(keypoints), np.float32))
                group.create_dataset("image_size", data=np.array([640, 480]))
    finally:
        db.close()


def test_hloc_features_import_and_localize(seven_small, pycolmap_project, tmp_path):
    ds, _, _ = seven_small
    model, database, _ = pycolmap_project
    features = tmp_path / "feats-sift.h5"
    _write_hloc_features(features, database)
    assert main(["map", "import", "hloc", "--model", str(model), "--features", str(features), "--images",
                 str(ds.images), "--out", str(tmp_path / "map")]) == 0
    queries = [q.name for q in read_queries(ds.root / "queries.txt") if int(q.name[6:12]) <= 110]
    poses = _localize(tmp_path / "map", ds, queries)
    assert all(p is not None for p in poses.values()) and _median_error_cm(poses, ds) < 2.0


def test_what_does_not_fit_is_named_and_leaves_no_map(seven_small, pycolmap_project, kitti, kitti_map, tmp_path):
    ds, _, _ = seven_small
    model, database, _ = pycolmap_project
    out = tmp_path / "map"
    export_colmap(kitti_map, tmp_path / "kitti")  # a database of other images
    with pytest.raises(ValueError, match=r"kitti/database.db: does not hold 31 of the model's images"):
        import_colmap(model, tmp_path / "kitti" / "database.db", ds.images, out)
    export_colmap(kitti_map, tmp_path / "kitti_float", float_descriptors=True)
    with pytest.raises(ValueError, match="float descriptors \\(128-D\\): name the preset"):
        import_colmap(tmp_path / "kitti_float" / "sparse", tmp_path / "kitti_float" / "database.db", kitti.images, out)
    with pytest.raises(ValueError, match="preset 'aliked' describes queries with 128-D|localizes on two layers"):
        import_colmap(tmp_path / "kitti_float" / "sparse", tmp_path / "kitti_float" / "database.db", kitti.images,
                      out, "accurate")
    features = tmp_path / "feats-sift.h5"
    _write_hloc_features(features, database)
    with h5py.File(features, "a") as f:  # one image's keypoints cut short
        first = sorted(f)[0]
        kp = np.asarray(f[first]["keypoints"])[:-1]
        del f[first]["keypoints"]
        f[first].create_dataset("keypoints", data=kp)
    with pytest.raises(ValueError, match=rf"feats-sift.h5: {first} has {len(kp)} keypoints but the model's image has "
                                         rf"{len(kp) + 1} points2D"):
        import_hloc(model, features, ds.images, out)
    with h5py.File(features, "a") as f:  # an image dropped
        del f[first]
    with pytest.raises(ValueError, match=r"feats-sift.h5: has no features for 1 of the model's images"):
        import_hloc(model, features, ds.images, out)
    superpoint = tmp_path / "feats-superpoint-n4096-r1024.h5"
    shutil.copy(features, superpoint)
    with pytest.raises(ValueError, match=r"features 'superpoint' cannot describe queries in vloc; supported: "
                                         r"aliked-n16, disk, sift"):
        import_hloc(model, superpoint, ds.images, out)
    with pytest.raises(FileNotFoundError, match="not a COLMAP model folder"):
        import_colmap(tmp_path, database, ds.images, out)
    assert not out.exists() and not list(tmp_path.glob("map*"))


def test_a_kapture_dataset_imports_and_localizes_as_well_as_the_prepared_map(data_dir, virtual_gallery, vg_map,
                                                                              tmp_path):
    """virtual_gallery's mapping kapture (a rig of two cameras at six timestamps) read by kapture's own
    loader; its 4 queries localize as on the map built from the prepared set."""
    assert main(["map", "import", "kapture", "--kapture", str(data_dir / "virtual_gallery" / "mapping"),
                 "--out", str(tmp_path / "vg")]) == 0
    imported, prepared = _localize(tmp_path / "vg", virtual_gallery), _localize(vg_map, virtual_gallery)
    assert all(p is not None for p in imported.values()) and len(imported) == 4
    assert _median_error_cm(imported, virtual_gallery) <= 1.1 * _median_error_cm(prepared, virtual_gallery) + 0.1


def test_a_kapture_export_reads_back_with_kaptures_loader(kitti_map, data_dir, tmp_path):
    import kapture
    from kapture.io.csv import kapture_from_dir

    from vloc.mapping.kapture_maps import export_kapture, import_kapture

    assert main(["map", "export", str(kitti_map), "--kapture", str(tmp_path / "k")]) == 0
    data = kapture_from_dir(str(tmp_path / "k"))
    model = pycolmap.Reconstruction(str(kitti_map / "model"))
    by_name = {im.name: im for im in model.images.values()}
    records = list(kapture.flatten(data.records_camera, is_sorted=True))
    assert sorted(name for _, _, name in records) == sorted(by_name)
    for timestamp, sensor_id, name in records:
        pose = data.trajectories[timestamp, sensor_id]
        expected = by_name[name].cam_from_world()
        x, y, z, w = expected.rotation.quat
        assert np.abs(np.asarray(pose.r_raw) - [w, x, y, z]).max() < 1e-12
        assert np.abs(np.asarray(pose.t_raw) - expected.translation).max() < 1e-12
        camera = model.cameras[by_name[name].camera_id]
        assert data.sensors[sensor_id].camera_params[2:] == list(camera.params)
    with pytest.raises(FileExistsError, match="already exists"):
        export_kapture(kitti_map, tmp_path / "k")
    posed_nowhere = tmp_path / "no_trajectories"  # a kapture folder without trajectories
    shutil.copytree(data_dir / "virtual_gallery" / "mapping" / "sensors", posed_nowhere / "sensors",
                    ignore=shutil.ignore_patterns("records_data", "trajectories.txt"))
    with pytest.raises(ValueError, match="no_trajectories: no trajectories"):
        import_kapture(posed_nowhere, tmp_path / "map")
    assert not (tmp_path / "map").exists()


def test_localize_writes_kapture_trajectories_keyed_by_the_query_records(virtual_gallery, vg_map, data_dir, tmp_path):
    """virtual_gallery's kapture queries localized from their own records folder; the trajectories
    file, read by kapture's loader, has the records' (timestamp, sensor) keys and poses near the
    dataset's own query trajectories."""
    from kapture.io.csv import trajectories_from_file

    query_kapture = data_dir / "virtual_gallery" / "query"
    prefix = "query/sensors/records_data/"
    renamed = {k: v[len(prefix):] for k, v in virtual_gallery.meta["image_name_map"].items() if v.startswith(prefix)}
    lines = [line.split(maxsplit=1) for line in (virtual_gallery.root / "queries.txt").read_text().splitlines() if line]
    (tmp_path / "queries.txt").write_text("".join(f"{renamed[name]} {camera}\n" for name, camera in lines))
    assert main(["localize", "--map", str(vg_map), "--queries", str(tmp_path / "queries.txt"), "--images",
                 str(query_kapture / "sensors" / "records_data"), "--out", str(tmp_path / "poses.txt"),
                 "--kapture-out", str(tmp_path / "trajectories.txt"), "--kapture-records", str(query_kapture)]) == 0
    written = trajectories_from_file(str(tmp_path / "trajectories.txt"))
    truth = trajectories_from_file(str(query_kapture / "sensors" / "trajectories.txt"))
    keys = sorted(written.key_pairs())
    assert len(keys) == 4 and set(keys) <= set(truth.key_pairs())
    for key in keys:
        assert np.linalg.norm(np.asarray(written[key].t_raw) - np.asarray(truth[key].t_raw)) < 0.05  # metres
