"""Map cameras: intrinsics the user gives (``--camera`` / ``--cameras``), EXIF or guessed
ones grouped as COLMAP's automatic camera mode does, and what SfM refines of them."""
from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import Callable

import pycolmap

from vloc.io.cameras import initial_camera
from vloc.io.images import ImageReadError, exif_focal_px, image_size

logger = logging.getLogger(__name__)


class RefineIntrinsics(StrEnum):
    """Which camera parameters SfM's bundle adjustment refines."""

    NONE = "none"
    FOCAL = "focal"
    ALL = "all"  # focal length, principal point and distortion


# (focal, principal point, extra params); without given intrinsics vloc refines what COLMAP's
# incremental and global mappers refine by default.
REFINE_FLAGS = {RefineIntrinsics.NONE: (False, False, False), RefineIntrinsics.FOCAL: (True, False, False),
                RefineIntrinsics.ALL: (True, True, True)}
COLMAP_DEFAULT_REFINE = (True, False, True)

Cameras = pycolmap.Camera | dict[str, pycolmap.Camera]


def given_cameras(cameras: Cameras | None, names: list[str],
                   reference: Path | None) -> dict[str, pycolmap.Camera] | None:
    """``cameras`` as name -> camera for every map image, or None; refused with a reference model
    (whose cameras are the map's) and when an image has none."""
    if cameras is None:
        return None
    if reference is not None:
        raise ValueError(f"{reference}: a reference model brings its own cameras; drop --camera/--cameras")
    if isinstance(cameras, pycolmap.Camera):
        return {n: cameras for n in names}
    missing = [n for n in names if n not in cameras]
    if missing:
        raise ValueError(f"--cameras: no camera for {len(missing)} map images, e.g. {missing[:3]}")
    return {n: cameras[n] for n in names}


def check_camera_sizes(images: Path, given: dict[str, pycolmap.Camera]) -> None:
    """Each image's size (from its header) must be its camera's; unreadable files are left to extraction."""
    for name, cam in given.items():
        try:
            width, height = image_size(images / name)
        except ImageReadError:
            continue
        if (width, height) != (cam.width, cam.height):
            raise ValueError(f"{images / name}: the image is {width}x{height} but its camera is "
                             f"{cam.width}x{cam.height}")


def refine_flags(refine: RefineIntrinsics | str | None, given: bool,
                  reference: Path | None) -> tuple[bool, bool, bool]:
    if refine is None:
        return REFINE_FLAGS[RefineIntrinsics.NONE] if given else COLMAP_DEFAULT_REFINE
    if reference is not None:
        raise ValueError(f"{reference}: triangulation keeps the reference cameras fixed; drop --refine-intrinsics")
    try:
        return REFINE_FLAGS[RefineIntrinsics(refine)]
    except ValueError:
        raise ValueError(f"Unknown --refine-intrinsics {refine!r}; valid: "
                         f"{', '.join(r.value for r in RefineIntrinsics)}") from None


def intrinsics_note(reference: Path | None, given: dict | None, refine: tuple[bool, bool, bool]) -> str:
    if reference is not None:
        return "reference model, fixed"
    refined = [n for n, on in zip(("focal", "principal point", "distortion"), refine, strict=True) if on]
    return f"{'given' if given else 'EXIF or guessed'}, refined: {', '.join(refined) or 'none'}"


def _group_cameras(names: list[str], key_of: Callable[[str], tuple], make: Callable[[str], pycolmap.Camera]
                   ) -> tuple[dict[int, pycolmap.Camera], list[int]]:
    """One camera per distinct ``key_of(name)``, made by ``make`` from the first image with that key:
    camera_id -> camera (ids from 1), and each image's camera id."""
    ids: dict[tuple, int] = {}
    cameras: dict[int, pycolmap.Camera] = {}
    camera_of_image = []
    for name in names:
        key = key_of(name)
        if key not in ids:
            ids[key] = len(ids) + 1
            cameras[ids[key]] = make(name)
        camera_of_image.append(ids[key])
    return cameras, camera_of_image


def given_shared_cameras(names: list[str], given: dict[str, pycolmap.Camera]
                          ) -> tuple[dict[int, pycolmap.Camera], list[int]]:
    """The given cameras, one per distinct calibration (sizes checked by :func:`check_camera_sizes`)."""
    def make(name: str) -> pycolmap.Camera:
        camera = pycolmap.Camera(given[name].todict())
        camera.has_prior_focal_length = True
        return camera

    cameras, camera_of_image = _group_cameras(
        names, lambda n: (given[n].model.name, given[n].width, given[n].height, tuple(map(float, given[n].params))),
        make)
    logger.info("%d images share %d given camera(s)", len(names), len(cameras))
    return cameras, camera_of_image


def shared_cameras(names: list[str], image_sizes: dict[str, tuple[int, int]], image_dir: Path
                   ) -> tuple[dict[int, pycolmap.Camera], list[int]]:
    """One SIMPLE_RADIAL camera per group of images with the same size and EXIF focal length
    (COLMAP's automatic camera mode): a shared camera makes focal refinement far more stable.

    The EXIF focal (else 1.2 * max(width, height)) is only the starting value: the camera is not
    marked as having a trusted prior, so the mapper refines it. Phones' 35 mm-equivalent EXIF
    values are often off (lund: EXIF 996 px, SfM 801 px), and COLMAP never refines the focal of a
    "prior" camera while registering images: with the prior trusted, lund broke into 2-image
    fragments for most seeds; untrusted, all 29 images registered for every seed tried.
    """
    focals = {n: exif_focal_px(image_dir / n) for n in names}

    def key_of(name: str) -> tuple:
        focal = focals[name]
        return (*image_sizes[name], None if focal is None else round(focal, 1))

    def make(name: str) -> pycolmap.Camera:
        (width, height), focal = image_sizes[name], focals[name]
        camera = initial_camera(width, height, focal)
        logger.info("camera: %dx%d, initial focal %.1f px (%s)", width, height, camera.params[0],
                    "EXIF" if focal else "no EXIF: 1.2 * max side")
        return camera

    cameras, camera_of_image = _group_cameras(names, key_of, make)
    logger.info("%d images share %d camera(s)", len(names), len(cameras))
    return cameras, camera_of_image
