"""``vloc view``: an interactive 3D view of a map (plotly, its JavaScript embedded).

Points are sub-sampled to at most ``max_points`` (evenly, by a seeded choice: the same map gives
the same page); each registered image is a camera frustum, localized queries are frusta of
another colour, and with ground truth their true poses and the segment between the two centres.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap

from vloc.report.page import esc, figure_html, write_page

MAX_POINTS = 200_000
MAP_COLOUR, QUERY_COLOUR, TRUE_COLOUR, ERROR_COLOUR = "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"


def frustum_lines(poses: list[pycolmap.Rigid3d], cameras: list[pycolmap.Camera], size: float) -> np.ndarray:
    """Line segments of each camera's frustum (apex to the four image corners, and the image
    rectangle at depth ``size``), as ``(M, 3)`` points with NaN rows between polylines."""
    out = []
    for pose, cam in zip(poses, cameras, strict=True):
        w, h = cam.width, cam.height
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
        rays = np.array([np.append(cam.cam_from_img(c), 1.0) for c in corners])
        rays *= size / np.linalg.norm(rays, axis=1, keepdims=True)
        world_from_cam = pose.inverse()
        apex = world_from_cam.translation
        ends = np.array([world_from_cam * r for r in rays])
        nan = np.full((1, 3), np.nan)
        out += [np.vstack([ends, ends[:1], nan])] + [np.vstack([apex, e, nan]) for e in ends]
    return np.vstack(out) if out else np.zeros((0, 3))


def _lines_trace(points: np.ndarray, colour: str, name: str, width: float = 2.0):
    import plotly.graph_objects as go

    return go.Scatter3d(x=points[:, 0], y=points[:, 1], z=points[:, 2], mode="lines", name=name,
                        line=dict(color=colour, width=width), hoverinfo="skip")


def _centres_trace(poses: dict[str, pycolmap.Rigid3d], colour: str, name: str):
    import plotly.graph_objects as go

    names = list(poses)
    c = np.array([poses[n].inverse().translation for n in names]).reshape(-1, 3)
    return go.Scatter3d(x=c[:, 0], y=c[:, 1], z=c[:, 2], mode="markers", name=name, text=names,
                        hovertemplate="%{text}<extra>" + name + "</extra>", marker=dict(size=3, color=colour))


def sample_points(model: pycolmap.Reconstruction, max_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(P, 3)`` xyz and ``(P, 3)`` uint8 colours of at most ``max_points`` of the model's points."""
    ids = np.array(sorted(model.points3D), np.int64)
    if len(ids) > max_points:
        ids = np.sort(np.random.default_rng(seed).choice(ids, max_points, replace=False))
    xyz = np.array([model.points3D[int(i)].xyz for i in ids], np.float32).reshape(-1, 3)  # half the page size
    rgb = np.array([model.points3D[int(i)].color for i in ids], np.uint8).reshape(-1, 3)
    return xyz, rgb


def map_figure(model: pycolmap.Reconstruction, queries: dict[str, pycolmap.Rigid3d] | None = None,
               truth: dict[str, pycolmap.Rigid3d] | None = None, max_points: int = MAX_POINTS):
    """The plotly figure: points, map frusta, query frusta, true poses and error segments."""
    import plotly.graph_objects as go

    xyz, rgb = sample_points(model, max_points)
    images = sorted(model.images.values(), key=lambda im: im.name)
    map_poses = {im.name: im.cam_from_world() for im in images}
    centres = np.array([p.inverse().translation for p in map_poses.values()]).reshape(-1, 3)
    extent = np.ptp(np.vstack([centres, xyz]) if len(xyz) else centres, axis=0).max() if len(centres) else 1.0
    size = 0.04 * float(extent or 1.0)  # frustum depth: 4 % of the scene
    fig = go.Figure()
    colours = [f"rgb({r},{g},{b})" for r, g, b in rgb]
    fig.add_trace(go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="markers", name=f"points3D ({len(xyz)})",
                               marker=dict(size=1.5, color=colours), hoverinfo="skip"))
    fig.add_trace(_lines_trace(frustum_lines(list(map_poses.values()), [model.cameras[im.camera_id] for im in images],
                                             size), MAP_COLOUR, f"map images ({len(images)})", 1.5))
    fig.add_trace(_centres_trace(map_poses, MAP_COLOUR, "map image"))
    camera = model.cameras[images[0].camera_id] if images else None
    for poses, colour, label, plural in ((queries, QUERY_COLOUR, "localized query", "localized queries"),
                                         (truth, TRUE_COLOUR, "true pose", "true poses")):
        if poses and camera is not None:
            fig.add_trace(_lines_trace(frustum_lines(list(poses.values()), [camera] * len(poses), size), colour,
                                       f"{plural} ({len(poses)})"))
            fig.add_trace(_centres_trace(poses, colour, label))
    if queries and truth:
        both = [n for n in queries if n in truth]
        seg = np.vstack([np.vstack([queries[n].inverse().translation, truth[n].inverse().translation,
                                    np.full(3, np.nan)]) for n in both]) if both else np.zeros((0, 3))
        fig.add_trace(_lines_trace(seg, ERROR_COLOUR, "error", 4))
    fig.update_layout(height=760, margin=dict(l=0, r=0, t=30, b=0), scene=dict(aspectmode="data"),
                      legend=dict(itemsizing="constant"))
    return fig


def write_map_view(map_dir: Path | str, out: Path | str, poses: Path | str | None = None,
                   gt: Path | str | None = None, max_points: int = MAX_POINTS) -> Path:
    """Write the 3D view of ``map_dir`` (with the localized ``poses`` and true ``gt`` poses) to ``out``."""
    from vloc.io.poses import read_poses
    from vloc.mapping.manifest import read_manifest
    from vloc.report.ground import ground_plane_html

    map_dir = Path(map_dir)
    manifest = read_manifest(map_dir)  # names the directory when it is not a map
    model = pycolmap.Reconstruction(str(map_dir / "model"))
    for path in (poses, gt):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such pose list")
    queries = read_poses(poses) if poses is not None else None
    truth = read_poses(gt) if gt is not None else None
    if truth is not None and queries is not None:
        truth = {n: p for n, p in truth.items() if n in queries} or truth
    fig = map_figure(model, queries, truth, max_points)
    if manifest.geo is not None:  # a geo-registered map's frame is east-north-up metres
        fig.update_layout(scene=dict(aspectmode="data", xaxis_title="east (m)", yaxis_title="north (m)",
                                     zaxis_title="up (m)"))
    body = (f"<h1>vloc map: {esc(map_dir)}</h1><p>{model.num_reg_images()} images, {model.num_points3D()} "
            f"points3D (shown: at most {max_points:,}); preset <code>{esc(manifest.preset_name)}</code>. Drag to "
            "rotate, scroll to zoom, hover a camera for its name.</p>" + figure_html(fig)
            + ground_plane_html(manifest.geo, {im.name: im.projection_center() for im in model.images.values()
                                                if im.has_pose}, queries))
    data = {"kind": "map-view", "cameras": model.num_reg_images(), "queries": len(queries or {})}
    return write_page(out, f"vloc view {map_dir.name}", body, data)
