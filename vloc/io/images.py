"""Image reading with clear errors, and EXIF focal lengths.

Every image, map or query, is decoded by :func:`read_image` to 8 bits: 16-bit grey and colour
images (PNG, TIFF: what Mono16 industrial and robot cameras write) are scaled by 255 / 65535, never
clipped; palette, grey + alpha, RGBA and CMYK images are converted to RGB (alpha dropped).

EXIF orientation is not applied, to map and query images alike, as COLMAP does: pixels are used
as stored, which is the layout the sensor's intrinsics describe. An image whose orientation tag
says it is displayed rotated or mirrored gets a warning (its pixels are not the way a viewer
shows it, and intrinsics given for the displayed orientation would not fit).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import BinaryIO, Iterator

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
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            array = _to_uint8(im, grayscale, label)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{label}: cannot read image ({_decoder_message(exc, path)})") from exc
    if array.size == 0:
        raise ImageReadError(f"{label}: image is empty")
    if orientation != 1:
        logger.warning("%s: EXIF orientation %s (displayed rotated or mirrored) is not applied: vloc uses the "
                       "pixels as stored, for map and query images alike; give intrinsics for that layout",
                       label, orientation)
    return array


def _decoder_message(exc: Exception, source: Path | BinaryIO) -> str:
    """What the decoder said, without the repr of an in-memory stream (which says nothing)."""
    if isinstance(source, Path):
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "not an image in a format Pillow decodes (JPEG, PNG, TIFF, BMP, ...)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_uint8(im: Image.Image, grayscale: bool, label) -> np.ndarray:
    """A decoded PIL image -> ``(H, W, 3)`` RGB or ``(H, W)`` grey uint8, deeper images scaled."""
    if im.mode in SIXTEEN_BIT_MODES or im.mode == "I":
        values = np.asarray(im)
        if im.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(f"{label}: 32-bit integer image with values outside 0..65535; "
                                 "save it with 8 or 16 bits per channel")
        grey = _scale16(values)
        return grey if grayscale else np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise ImageReadError(f"{label}: floating-point image; save it with 8 or 16 bits per channel")
    return np.asarray(im.convert("L" if grayscale else "RGB"))


def _scale16(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, rounded (x / 257: 0 and 65535 map to 0 and 255, 257 k to k exactly)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


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


def read_images_ahead(directory: Path | str, names: list[str], depth: int = 4) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, read_image(directory / name))`` in order, decoding up to ``depth`` images ahead in a
    thread (decoding releases the GIL) so a consumer's network does not wait for the decoder; at
    most ``depth + 1`` images are held at once."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    directory = Path(directory)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vloc-read") as pool:
        pending = deque(pool.submit(read_image, directory / n) for n in names[:depth])
        for index, name in enumerate(names):
            image = pending.popleft().result()
            if index + depth < len(names):
                pending.append(pool.submit(read_image, directory / names[index + depth]))
            yield name, image
