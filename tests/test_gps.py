"""GPS positions (EXIF and files), the local ENU frame, and the GPS similarity fit (issue 26)."""
from __future__ import annotations

import io
import numpy as np
import pycolmap
import pytest
from PIL import Image

from vloc.io.gps import EnuFrame, GpsFix, read_exif_gps, read_gps_file
from vloc.mapping.georegister import fit_to_gps


def _jpeg_with_gps(gps: dict) -> io.BytesIO:
    exif = Image.Exif()
    exif[0x8825] = gps
    buf = io.BytesIO()
    Image.new("RGB", (32, 24)).save(buf, "JPEG", exif=exif)
    buf.seek(0)
    return buf


def test_exif_gps_hemispheres_and_altitude():
    fix = read_exif_gps(_jpeg_with_gps({1: "S", 2: (33.0, 51.0, 36.0), 3: "W", 4: (151.0, 12.0, 36.0),
                                        5: b"\x01", 6: 12.5}))
    assert (fix.latitude, fix.longitude, fix.altitude) == pytest.approx((-33.86, -151.21, -12.5))
    assert fix.horizontal_sigma is None
    assert read_exif_gps(_jpeg_with_gps({})) is None
    assert read_exif_gps(_jpeg_with_gps({1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (1.0, 0.0, 0.0)})) is None
    assert read_exif_gps(io.BytesIO(b"not an image")) is None


def test_lund_exif_positions(data_dir):
    images = data_dir / "lund" / "images"
    fixes = [read_exif_gps(p) for p in sorted(images.glob("*.jpg"))]
    assert len(fixes) == 29 and all(f is not None for f in fixes)
    lla = np.array([(f.latitude, f.longitude) for f in fixes])
    assert np.all(np.abs(lla - [55.698, 13.195]) < 0.01)


def test_gps_file(tmp_path):
    path = tmp_path / "gps.txt"
    path.write_text("# name lat lon alt sigma\na.jpg 55.7 13.19 40 3.5\n\nb.jpg -1 -2 0  # no sigma\n")
    fixes = read_gps_file(path, names=["a.jpg", "b.jpg", "c.jpg"])
    assert fixes["a.jpg"] == GpsFix(latitude=55.7, longitude=13.19, altitude=40.0, horizontal_sigma=3.5)
    assert fixes["b.jpg"].horizontal_sigma is None and set(fixes) == {"a.jpg", "b.jpg"}


@pytest.mark.parametrize("line, message", [
    ("x.jpg 55.7 13.19 40", "no image named 'x.jpg'"),
    ("a.jpg 91 13.19 40", "latitude 91.0 is outside"),
    ("a.jpg 55 181 40", "longitude 181.0 is outside"),
    ("a.jpg 55 13 nan", "finite"),
    ("a.jpg 55 13 40 0", "sigma"),
    ("a.jpg 55 13", "expected 'name lat lon alt"),
    ("a.jpg 55N 13E 40", "are not numbers"),
])
def test_gps_file_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "gps.txt"
    path.write_text(f"# header\n{line}\n")
    with pytest.raises(ValueError, match=message) as info:
        read_gps_file(path, names=["a.jpg"])
    assert f"{path}:2" in str(info.value)


def test_gps_file_duplicate(tmp_path):
    path = tmp_path / "gps.txt"
    path.write_text("a.jpg 1 2 3\na.jpg 1 2 3\n")
    with pytest.raises(ValueError, match=r"gps.txt:2: 'a.jpg' is given twice"):
        read_gps_file(path)


def test_enu_frame_round_trip_and_scale():
    frame = EnuFrame(latitude=55.7, longitude=13.19, altitude=30.0)
    lla = np.array([[55.701, 13.19, 30.0], [55.7, 13.1916, 35.0], [55.69, 13.2, 0.0]])
    enu = frame.to_enu(lla)
    assert enu[0] == pytest.approx([0.0, 111.3, 0.0], abs=0.5)  # 0.001 deg of latitude ~ 111 m north
    assert enu[1, 0] == pytest.approx(100.4, abs=0.5)  # 0.0016 deg of longitude at 55.7 N
    back = frame.to_wgs84(enu)
    assert np.abs(frame.to_enu(back) - enu).max() < 1e-6
    assert frame.to_enu(np.zeros((0, 3))).shape == (0, 3)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        frame.to_enu(np.zeros(3))


def test_fit_to_gps_recovers_similarity_and_names_outliers():
    rng = np.random.default_rng(0)
    names = [f"{i:03d}.jpg" for i in range(24)]
    centres = rng.uniform(-2, 2, (24, 3)) * [1, 1, 0.1]
    rotation = pycolmap.Rotation3d(np.array([0.05, 0.02, 0.6, 0.8]) / np.linalg.norm([0.05, 0.02, 0.6, 0.8]))
    true = pycolmap.Sim3d(25.0, rotation, np.array([10.0, -40.0, 2.0]))
    enu = centres @ (true.scale * true.rotation.matrix()).T + true.translation + rng.normal(0, 0.3, (24, 3))
    enu[[3, 11, 17]] += [60.0, -45.0, 0.0]  # three wrong fixes
    fit = fit_to_gps(dict(zip(names, centres)), dict(zip(names, enu)), max_error_m=5.0)
    assert fit.outliers == [names[3], names[11], names[17]]
    assert fit.enu_from_model.scale == pytest.approx(25.0, rel=0.02)
    assert fit.median_residual_m() < 1.0 and len(fit.inliers) == 21


def test_fit_to_gps_refuses_too_few_or_collinear():
    line = {f"{i}": np.array([i, 0.0, 0.0]) for i in range(5)}
    with pytest.raises(ValueError, match="lie on a line"):
        fit_to_gps(line, {k: 2 * v for k, v in line.items()})
    with pytest.raises(ValueError, match="needs at least 3"):
        fit_to_gps({"a": np.zeros(3), "b": np.ones(3)}, {"a": np.zeros(3), "c": np.ones(3)})


def test_geo_pose_position_heading_and_sigma():
    from vloc.localization.geo import geo_pose
    from vloc.localization.result import LocalizationResult

    frame = EnuFrame(latitude=55.7, longitude=13.19, altitude=30.0)
    centre = np.array([100.0, 50.0, 2.0])
    # optical axis (camera z) pointing east: world_from_cam columns are the camera axes in ENU
    world_from_cam = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    cam_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(world_from_cam.T), -world_from_cam.T @ centre)
    # variances of cam_from_world's translation along the camera's x (north-south here), y (up-down), z (east)
    covariance = np.diag([1e-12, 1e-12, 1e-12, 0.04, 0.09, 0.01])
    pose = geo_pose(cam_from_world, covariance, frame)
    assert pose.heading_deg == pytest.approx(90.0)
    assert frame.to_enu(np.array([[pose.latitude, pose.longitude, pose.altitude]]))[0] == pytest.approx(centre, abs=1e-6)
    assert pose.horizontal_sigma_m == pytest.approx(np.sqrt(0.04 + 0.01), rel=1e-3)
    assert geo_pose(cam_from_world, None, frame).horizontal_sigma_m is None
    result = LocalizationResult("q", True, cam_from_world=cam_from_world)
    assert "geo" not in result.to_dict()  # a map without GPS answers without the field
    result.geo = pose
    assert result.to_dict()["geo"]["heading_deg"] == pytest.approx(90.0)


def test_known_pose_build_geo_registered_by_a_gps_file_names_the_outlier(kitti, tmp_path):
    """``map build --reference --gps FILE``: the reference frame moved by a similarity onto GPS
    positions made from its own centres (a known rotation, scale and place), one of them 60 m off."""
    from vloc.cli import main
    from vloc.localization.geo import map_frame
    from vloc.mapping.map_dir import load_map

    ref = pycolmap.Reconstruction(str(kitti.ref_model))
    images = sorted((im for im in ref.images.values() if im.has_pose), key=lambda im: im.name)
    angle = np.deg2rad(35.0)
    rotation = np.array([[np.cos(angle), 0.0, np.sin(angle)], [np.sin(angle), 0.0, -np.cos(angle)],
                         [0.0, -1.0, 0.0]])
    enu = np.array([2.0 * rotation @ im.projection_center() + [40.0, -15.0, 3.0] for im in images])
    wrong = images[3].name
    enu[3] += [60.0, 0.0, 0.0]
    frame = EnuFrame(latitude=48.137, longitude=11.575, altitude=520.0)
    lines = [f"{im.name} {lat:.10f} {lon:.10f} {alt:.4f} 2.0"
             for im, (lat, lon, alt) in zip(images, frame.to_wgs84(enu), strict=True)]
    gps = tmp_path / "gps.txt"
    gps.write_text("# name lat lon alt sigma\n" + "\n".join(lines) + "\n")
    out = tmp_path / "map"
    assert main(["map", "build", "--images", str(kitti.images), "--reference", str(kitti.ref_model),
                 "--gps", str(gps), "--out", str(out)]) == 0
    data = load_map(out)
    geo = data.manifest.geo
    assert geo.outliers == [wrong] and geo.images_with_gps == len(images)
    # observed: scale 2 - 3e-6, residuals 4-14 mm (the file's digits and the WGS84 round trips)
    assert geo.scale == pytest.approx(2.0, rel=1e-5) and geo.median_residual_m < 0.02
    mapped = map_frame(data.manifest)
    for im in data.reconstruction.images.values():
        if im.name != wrong:  # every other camera lies on its GPS position
            lat, lon, alt = mapped.to_wgs84(im.projection_center()[None])[0]
            fix = next(line for line in lines if line.startswith(im.name + " ")).split()
            assert abs(lat - float(fix[1])) < 1e-8 and abs(lon - float(fix[2])) < 1e-8


def test_spatial_pairs_join_near_images_and_skip_those_without_gps():
    from vloc.retrieval.pairs import spatial_pairs

    positions = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [100.0, 0.0, 0.0], [np.nan] * 3, [7.0, 0.0, 0.0]])
    assert spatial_pairs(positions, 1, 50.0) == [(0, 1), (1, 4)]  # each image's nearest; 4's is 1
    assert spatial_pairs(positions, 5, 50.0) == [(0, 1), (0, 4), (1, 4)]  # 2 is 93 m from the nearest
    assert spatial_pairs(positions, 5, 3.5) == [(0, 1)]
    assert spatial_pairs(positions[:1], 5, 50.0) == [] and spatial_pairs(positions, 0, 50.0) == []
