"""``vloc info MAP --report``: a map's health in pictures.

Registered images, track-length and reprojection-error histograms, points per image, the
covisibility matrix (shared points3D between image pairs; maps of more than ``MAX_MATRIX``
images are shown in blocks of consecutive images by name, summed), and for SfM maps the images
that were not registered or were skipped, with why.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap

from vloc.report.page import esc, figure_html, table_html, write_page

MAX_MATRIX = 300  # cells per side of the covisibility heatmap


def covisibility(model: pycolmap.Reconstruction, names: list[str], blocks: int) -> np.ndarray:
    """``(B, B)`` int64: shared points3D between the images of each pair of ``blocks`` groups of
    consecutive ``names`` (one image per group when there are at most ``blocks`` images)."""
    group = {n: k * blocks // max(len(names), 1) for k, n in enumerate(names)}
    image_group = {im.image_id: group[im.name] for im in model.images.values() if im.name in group}
    matrix = np.zeros((blocks, blocks), np.int64)
    for point in model.points3D.values():
        groups = np.array(sorted({image_group[el.image_id] for el in point.track.elements if el.image_id in image_group}))
        if len(groups) > 1:
            matrix[np.ix_(groups, groups)] += 1
    np.fill_diagonal(matrix, 0)
    return matrix


def health_figures(model: pycolmap.Reconstruction) -> tuple[list, dict[str, float]]:
    """The plotly figures and the headline numbers of ``model``."""
    import plotly.graph_objects as go

    points = list(model.points3D.values())
    track = np.array([p.track.length() for p in points], int)
    error = np.array([p.error for p in points], float)
    images = sorted(model.images.values(), key=lambda im: im.name)
    names = [im.name for im in images]
    per_image = [im.num_points3D for im in images]
    layout = dict(height=300, margin=dict(l=50, r=20, t=40, b=40), showlegend=False)
    figs = [go.Figure(go.Histogram(x=track, xbins=dict(start=1.5, size=1)), layout=dict(
                title="track length (images per point3D)", xaxis_title="images", yaxis_title="points3D", **layout)),
            go.Figure(go.Histogram(x=error, nbinsx=50), layout=dict(
                title="mean reprojection error per point3D (px)", xaxis_title="px", yaxis_title="points3D", **layout)),
            go.Figure(go.Bar(x=names, y=per_image), layout=dict(
                title="points3D observed per image", yaxis_title="points3D", **{**layout, "height": 340}))]
    blocks = min(len(names), MAX_MATRIX)
    if blocks:
        grouped = len(names) > MAX_MATRIX
        labels = names if not grouped else [f"{names[k * len(names) // blocks]}…" for k in range(blocks)]
        figs.append(go.Figure(go.Heatmap(z=covisibility(model, names, blocks), x=labels, y=labels,
                                         colorscale="Viridis", hovertemplate="%{y} / %{x}: %{z}<extra></extra>"),
                              layout=dict(title="covisibility: shared points3D" + (
                                  f" (blocks of ~{len(names) / blocks:.1f} images)" if grouped else ""),
                                  height=640, margin=dict(l=120, r=20, t=40, b=120))))
    numbers = {"registered images": len(images), "cameras": len(model.cameras), "points3D": len(points),
               "mean track length": float(track.mean()) if len(track) else 0.0,
               "median reprojection error (px)": float(np.median(error)) if len(error) else 0.0,
               "mean points3D per image": float(np.mean(per_image)) if per_image else 0.0}
    return figs, numbers


def write_map_report(map_dir: Path | str, out: Path | str) -> Path:
    """Write the health report of ``map_dir`` to ``out``; returns ``out``."""
    from vloc.mapping.manifest import read_manifest

    map_dir = Path(map_dir)
    manifest = read_manifest(map_dir)  # names the directory when it is not a map
    model = pycolmap.Reconstruction(str(map_dir / "model"))
    figs, numbers = health_figures(model)
    source = manifest.source
    rows = [[k, f"{v:.3g}" if isinstance(v, float) else v] for k, v in numbers.items()]
    rows += [["built by", source.mode], ["preset", manifest.preset_name], ["created", manifest.created]]
    body = f"<h1>vloc map health: {esc(map_dir)}</h1>" + table_html(["", "value"], rows)
    if source.mode.startswith("sfm") or source.unregistered_images or source.skipped_images:
        missing = [[n, "not registered by SfM"] for n in source.unregistered_images]
        missing += [[n, why] for n, why in source.skipped_images.items()]
        body += (f"<h2>Images not in the map ({len(missing)})</h2>"
                 + (table_html(["image", "why"], missing) if missing else "<p>Every input image was registered.</p>"))
    body += "".join(figure_html(f) for f in figs)
    data = {"kind": "map-report", "cameras": numbers["registered images"], "figures": len(figs)}
    return write_page(out, f"vloc map health {map_dir.name}", body, data)
