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


def _dots(draw, points: np.ndarray, scale: float, colour: tuple[int, int, int], radius: float = 1.5) -> None:
    for x, y in (np.asarray(points, float) - 0.5) * scale:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=1)


def draw_matches(query: np.ndarray, inliers: np.ndarray, outliers: np.ndarray, map_image: np.ndarray | None = None,
                 lines_query: np.ndarray | None = None, lines_map: np.ndarray | None = None, height: int = 240,
                 max_lines: int = 60) -> np.ndarray:
    """The query at ``height`` px with ``outliers`` ``(N, 2)`` in red under ``inliers`` in green and,
    with ``map_image``, that image to its right and a line per correspondence ``lines_query`` ->
    ``lines_map`` (``(K, 2)`` each; at most ``max_lines`` drawn, evenly chosen)."""
    from PIL import Image, ImageDraw

    left = _rgb(query)
    sl = height / left.height
    left = left.resize((max(1, round(left.width * sl)), height), Image.BILINEAR)
    right, sr = None, 1.0
    if map_image is not None:
        right = _rgb(map_image)
        sr = height / right.height
        right = right.resize((max(1, round(right.width * sr)), height), Image.BILINEAR)
    canvas = Image.new("RGB", (left.width + (right.width if right is not None else 0), height))
    canvas.paste(left, (0, 0))
    if right is not None:
        canvas.paste(right, (left.width, 0))
    draw = ImageDraw.Draw(canvas)
    _dots(draw, outliers, sl, OUTLIER)
    _dots(draw, inliers, sl, INLIER)
    if right is not None and lines_query is not None and len(lines_query):
        keep = np.linspace(0, len(lines_query) - 1, min(len(lines_query), max_lines)).round().astype(int)
        for (xq, yq), (xm, ym) in zip((np.asarray(lines_query, float)[keep] - 0.5) * sl,
                                      (np.asarray(lines_map, float)[keep] - 0.5) * sr, strict=True):
            draw.line((xq, yq, xm + left.width, ym), fill=INLIER, width=1)
    return np.asarray(canvas)
