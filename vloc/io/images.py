"""Image reading with clear errors, and EXIF focal lengths."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """An image file is missing, unreadable, truncated or empty."""


def read_image(path: Path | str | BinaryIO, grayscale: bool = False, name: str | None = None) -> np.ndarray:
    """Read an image (a file, or a binary stream of an encoded image) fully into memory.

    Returns:
        ``(H, W, 3)`` uint8 RGB, or ``(H, W)`` uint8 when ``grayscale``.
    Raises:
        ImageReadError: naming the file (or ``name``) and the problem (missing, not an image, truncated).
    """
    if isinstance(path, (str, Path)):
        path = Path(path)
        if not path.is_file():
            raise ImageReadError(f"{path}: no such image file")
    label = name or path
    try:
        with Image.open(path) as im:
            im.load()  # decodes everything: a truncated file fails here
            im = im.convert("L" if grayscale else "RGB")
            array = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        detail = exc if isinstance(path, Path) else type(exc).__name__  # a stream's repr says nothing
        raise ImageReadError(f"{label}: cannot read image ({detail})") from exc
    if array.size == 0:
        raise ImageReadError(f"{label}: image is empty")
    return array


def to_grayscale(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def image_size(path: Path | str) -> tuple[int, int]:
    """``(width, height)`` from the header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageReadError(f"{path}: cannot read image header ({exc})") from exc


def exif_focal_px(path: Path | str | BinaryIO) -> float | None:
    """Focal length in pixels from EXIF (35 mm equivalent, or focal plane resolution), or None."""
    if hasattr(path, "seek"):
        path.seek(0)
    try:
        with Image.open(path) as im:
            width, height = im.size
            exif = im.getexif()
    except (UnidentifiedImageError, OSError):
        return None
    sub = exif.get_ifd(0x8769) if exif else {}
    f35 = sub.get(0xA405)  # FocalLengthIn35mmFilm
    if f35:
        return float(f35) / 36.0 * max(width, height)
    focal_mm = sub.get(0x920A)  # FocalLength
    res = sub.get(0xA20E)  # FocalPlaneXResolution
    unit = sub.get(0xA210, 2)  # FocalPlaneResolutionUnit: 2 inch, 3 cm
    if focal_mm and res:
        per_mm = float(res) / (25.4 if unit == 2 else 10.0)
        return float(focal_mm) * per_mm
    return None


def list_images(directory: Path | str) -> list[str]:
    """Image names (relative POSIX paths) under ``directory``, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: image directory does not exist")
    names = [p.relative_to(directory).as_posix() for p in directory.rglob("*")
             if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(names)
