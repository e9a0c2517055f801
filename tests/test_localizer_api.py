"""The warm Python API: image as path / bytes / array, camera as pycolmap / dict / EXIF, priors."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vloc.evaluation.metrics import pose_error
from vloc.io.cameras import read_queries
from vloc.io.poses import read_poses, rigid_from_qt
from vloc.localization.localizer import Localizer, Prior

QUERY = "000109.png"


@pytest.fixture(scope="module")
def localizer(kitti_map) -> Localizer:
    return Localizer.load(kitti_map)


@pytest.fixture(scope="module")
def truth(kitti):
    return read_poses(kitti.gt)[QUERY]


@pytest.fixture(scope="module")
def camera(kitti):
    return {q.name: q.camera for q in read_queries(kitti.queries)}[QUERY]


def assert_accurate(result, truth, max_t=0.05, max_r=0.2):
    assert result.success, result.reason
    dt, dr = pose_error(result.cam_from_world, truth)
    assert dt < max_t and dr < max_r, (dt, dr)


def test_path_array_and_bytes_give_the_same_pose(localizer, kitti, truth, camera):
    path = kitti.images / QUERY
    from_path = localizer.localize(path, camera)
    assert_accurate(from_path, truth)
    assert from_path.name == QUERY and from_path.retrieval == "global" and len(from_path.retrieved) == 5
    assert from_path.covariance.shape == (6, 6) and 0 < from_path.inlier_ratio <= 1
    array = np.asarray(Image.open(path).convert("RGB"))
    assert_accurate(localizer.localize(array, camera), truth)
    assert_accurate(localizer.localize(path.read_bytes(), camera), truth)


def test_camera_as_dict_and_from_exif(localizer, kitti, truth, camera):
    as_dict = dict(model="PINHOLE", width=camera.width, height=camera.height, params=list(camera.params))
    result = localizer.localize(kitti.images / QUERY, as_dict)
    assert_accurate(result, truth)
    assert result.intrinsics_source == "given"
    # a JPEG whose EXIF gives the true focal length (4 mm at 179.714 px/mm)
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x920A], ifd[0xA20E], ifd[0xA210] = 4.0, 1797.14, 3
    buf = io.BytesIO()
    Image.open(kitti.images / QUERY).convert("RGB").save(buf, "JPEG", quality=95, exif=exif.tobytes())
    result = localizer.localize(buf.getvalue())
    assert result.intrinsics_source == "exif"
    assert result.camera.params[0] == pytest.approx(718.856, rel=1e-3)
    # principal point assumed at the centre (13 px off here): looser than with given intrinsics
    assert_accurate(result, truth, max_t=0.3, max_r=2.0)


def test_bad_inputs_fail_with_reasons(localizer, camera):
    assert "cannot read image" in localizer.localize(b"not an image", camera).reason
    assert "uint8 array" in localizer.localize(np.zeros((10, 10), np.float32)).reason
    wrong = dict(model="PINHOLE", width=640, height=480, params=[500, 500, 320, 240])
    assert "camera is 640x480 but the image is 1241x376" in localizer.localize(
        np.zeros((376, 1241), np.uint8), wrong).reason
    assert "takes 4 parameters" in localizer.localize(np.zeros((376, 1241), np.uint8),
                                                      dict(wrong, params=[1, 2])).reason


def test_right_prior_uses_nearby_images_and_wrong_prior_recovers(localizer, kitti, truth, camera):
    right = Prior(truth, radius=2.0)
    result = localizer.localize(kitti.images / QUERY, camera, prior=right)
    assert_accurate(result, truth)
    assert result.retrieval == "prior"
    centre = truth.inverse().translation
    store = localizer.store
    assert all(np.linalg.norm(store.centres[store.row(n)] - centre) <= 2.0 for n in result.retrieved)
    # a prior 1 km away: no map image near it, global retrieval takes over
    far = rigid_from_qt(np.array([1.0, 0, 0, 0]), np.array([1000.0, 0, 0]))
    result = localizer.localize(kitti.images / QUERY, camera, prior=Prior(far, radius=2.0))
    assert_accurate(result, truth)
    assert result.retrieval == "global after prior"
    # the previous result as the prior (default radius); a failed result means no prior
    again = localizer.localize(kitti.images / QUERY, camera, prior=result)
    assert_accurate(again, truth)
    assert again.retrieval == "prior" and localizer.prior_radius > 0
    failed = localizer.localize(b"not an image")
    assert localizer.localize(kitti.images / QUERY, camera, prior=failed).retrieval == "global"


def test_localizing_writes_nothing_into_the_map(kitti_map, localizer, kitti, camera):
    def snapshot():
        return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in kitti_map.rglob("*")}

    before = snapshot()
    localizer.localize(kitti.images / QUERY, camera)
    Localizer.load(kitti_map).localize(kitti.images / QUERY)
    assert snapshot() == before


def test_top_level_names_are_lazy():
    import subprocess
    import sys

    code = "import sys, vloc; assert 'torch' not in sys.modules; print(vloc.Localizer.__name__, vloc.Tracker.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["Localizer", "Tracker"]
