"""Pictures of matches for the reports: keypoints over an image, match lines between two images.

Keypoints are in COLMAP's pixel convention (the image's top-left corner at (0, 0), pixel centres
at +0.5); drawing shifts them by -0.5 onto PIL's pixel-centre grid.
"""
from __future__ import annotations

import numpy as np

INLIER = (46, 204, 64)
OUTLIER = (230, 40, 40)


def _rgb(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image).convert("RGB")


def _scale_to(im, max_side: int) -> tuple[object, float]:
    from PIL import Image

    scale = min(1.0, max_side / max(im.size))
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    return im, scale


def _dots(draw, points: np.ndarray, scale: float, colour: tuple[int, int, int], radius: float = 2.0) -> None:
    for x, y in (np.asarray(points, float) - 0.5) * scale:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=1)


def draw_keypoints(image: np.ndarray, inliers: np.ndarray, outliers: np.ndarray, max_side: int = 480) -> np.ndarray:
    """The image (resized to ``max_side``) with ``outliers`` ``(N, 2)`` in red under ``inliers`` in green."""
    from PIL import ImageDraw

    im, scale = _scale_to(_rgb(image), max_side)
    draw = ImageDraw.Draw(im)
    _dots(draw, outliers, scale, OUTLIER)
    _dots(draw, inliers, scale, INLIER)
    return np.asarray(im)


def draw_match_lines(query: np.ndarray, map_image: np.ndarray, points_query: np.ndarray, points_map: np.ndarray,
                     height: int = 240, max_lines: int = 60) -> np.ndarray:
    """Query and map image side by side at ``height`` px with a line per correspondence
    (``(N, 2)`` each, at most ``max_lines`` drawn, evenly chosen)."""
    from PIL import Image, ImageDraw

    left, right = _rgb(query), _rgb(map_image)
    sl, sr = height / left.height, height / right.height
    left = left.resize((max(1, round(left.width * sl)), height), Image.BILINEAR)
    right = right.resize((max(1, round(right.width * sr)), height), Image.BILINEAR)
    canvas = Image.new("RGB", (left.width + right.width, height))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    draw = ImageDraw.Draw(canvas)
    keep = np.linspace(0, len(points_query) - 1, min(len(points_query), max_lines)).round().astype(int) \
        if len(points_query) else np.zeros(0, int)
    for (xq, yq), (xm, ym) in zip((np.asarray(points_query, float)[keep] - 0.5) * sl,
                                  (np.asarray(points_map, float)[keep] - 0.5) * sr, strict=True):
        draw.line((xq, yq, xm + left.width, ym), fill=INLIER, width=1)
    return np.asarray(canvas)
