"""Render the demo scene: a textured synthetic room with exact ground-truth poses.

The room (8 x 5 x 3 m, world z up) holds four boxes of "furniture". Images are rendered offline
by CPU raycasting (``open3d.t.geometry.RaycastingScene``). The colour of a ray hit is a procedural
function of the 3D hit point and of the surface it lies on (never of the pixel or the viewpoint),
so one 3D point has the same colour in every image; a fixed directional light depends only on the
surface normal. Each pixel averages 2x2 sub-pixel rays.

Camera convention (COLMAP): PINHOLE ``fx fy cx cy`` with ``cx = width / 2``, ``cy = height / 2``;
pixel ``(col, row)`` covers ``[col, col + 1) x [row, row + 1)`` and has its centre at
``(col + 0.5, row + 0.5)``; the ray through image point ``(u, v)`` has direction
``K^-1 [u, v, 1]`` in the camera frame (x right, y down, z forward), and
``x_cam = R x_world + t`` (cam_from_world). Sub-pixel rays go through ``col + 0.25`` / ``col + 0.75``.
"""
from __future__ import annotations

import json
import logging
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from open3d.t.geometry import RaycastingScene

logger = logging.getLogger(__name__)

ROOM = (8.0, 5.0, 3.0)  # metres along x, y, z (z up)
BOXES = (  # (min corner, max corner)
    ((1.6, 3.9, 0.0), (2.7, 4.8, 0.85)),
    ((4.2, 4.2, 0.0), (4.9, 4.9, 1.9)),
    ((3.2, 2.7, 0.0), (4.1, 3.4, 0.7)),
    ((5.8, 3.1, 0.0), (6.35, 3.65, 0.5)),
)
BASE_WIDTH = 640  # focal lengths below are for this width and scale with it
MAP_FOCAL = 500.0
# Queries: (x, y, z, yaw deg, pitch deg, roll deg, focal px at BASE_WIDTH); yaw 90 looks along +y.
QUERIES = (
    (2.05, 1.35, 1.50, 78.0, -6.0, 0.0, 500.0),
    (3.30, 0.75, 1.75, 95.0, -20.0, 1.5, 400.0),
    (4.55, 1.45, 1.45, 103.0, 2.0, 0.0, 650.0),
    (5.50, 1.20, 1.65, 80.0, -15.0, -3.0, 500.0),
    (6.30, 1.30, 1.40, 112.0, -9.0, 0.0, 450.0),
)
# The hard variants' queries (issue 13): looking down steeply (45-50 deg from every map camera's
# optical axis; the map cameras look across the room at pitch -12 +- 3 deg), each also turned
# upside down (roll 180 deg), and one looking at the wall behind the map cameras, which no map
# image sees (a query that must be refused).
HARD_QUERIES = (
    (2.10, 2.00, 2.20, 92.0, -60.0, 0.0, 500.0),
    (2.10, 2.00, 2.20, 92.0, -60.0, 180.0, 500.0),
    (3.90, 2.10, 2.10, 84.0, -58.0, 0.0, 500.0),
    (3.90, 2.10, 2.10, 84.0, -58.0, 180.0, 500.0),
)
UNSEEN_QUERY = (4.00, 3.00, 1.50, -90.0, -5.0, 0.0, 500.0)
LOW_TEXTURE_CONTRAST = 0.25  # the low-texture variant: the texture's deviation from its mean, scaled


class SceneVariant(StrEnum):
    STANDARD = "standard"  # QUERIES, full texture
    HARD = "hard"  # HARD_QUERIES + UNSEEN_QUERY, full texture
    HARD_LOW_TEXTURE = "hard-low-texture"  # HARD_QUERIES at LOW_TEXTURE_CONTRAST


LIGHT = np.array([0.35, 0.55, 0.76]) / np.linalg.norm([0.35, 0.55, 0.76])
BACKGROUND = 0.5  # grey for rays that miss (none do inside the closed room)
SUPERSAMPLE = 2
CHUNK = 1 << 16  # rays shaded at once


def world_from_cam_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """Columns: camera x (right), y (down), z (forward) in world coordinates (world z up)."""
    yaw, pitch, roll = np.radians([yaw_deg, pitch_deg, roll_deg])
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)  # roll about the optical axis
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)


def quat_wxyz(R: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(qw, qx, qy, qz)``, ``qw >= 0``, of a rotation matrix (Bar-Itzhack: the
    eigenvector of the largest eigenvalue of a symmetric 4x4 matrix; robust for any angle)."""
    m = R
    K = np.array([
        [m[0, 0] - m[1, 1] - m[2, 2], m[1, 0] + m[0, 1], m[2, 0] + m[0, 2], m[2, 1] - m[1, 2]],
        [m[1, 0] + m[0, 1], m[1, 1] - m[0, 0] - m[2, 2], m[2, 1] + m[1, 2], m[0, 2] - m[2, 0]],
        [m[2, 0] + m[0, 2], m[2, 1] + m[1, 2], m[2, 2] - m[0, 0] - m[1, 1], m[1, 0] - m[0, 1]],
        [m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1], m[0, 0] + m[1, 1] + m[2, 2]],
    ]) / 3.0
    x, y, z, w = np.linalg.eigh(K)[1][:, -1]
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q) * (1.0 if w >= 0 else -1.0)


def _hash(seed: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """32-bit integer hash of uint32 (seed, cell i, cell j); four independent bytes per call."""
    with np.errstate(over="ignore"):
        h = (seed * np.uint32(0x9E3779B1)) ^ (i * np.uint32(0x8DA6B343)) ^ (j * np.uint32(0xD8163841))
        for mult, shift in ((0x7FEB352D, 16), (0x846CA68B, 15)):  # "lowbias32" finaliser
            h ^= h >> np.uint32(shift)
            h *= np.uint32(mult)
        h ^= h >> np.uint32(16)
    return h


def _byte(h: np.ndarray, k: int) -> np.ndarray:
    """Byte k of hash h as float32 in [0, 1]."""
    return ((h >> np.uint32(8 * k)) & np.uint32(255)).astype(np.float32) * np.float32(1 / 255)


def _cells(u: np.ndarray, v: np.ndarray, scale: float) -> tuple[np.ndarray, ...]:
    """Cell indices (uint32) and fractional positions (float32) on a square grid of side ``scale``."""
    su, sv = u * np.float32(1 / scale), v * np.float32(1 / scale)
    fu, fv = np.floor(su), np.floor(sv)
    return ((fu + 4096).astype(np.uint32), (fv + 4096).astype(np.uint32), su - fu, sv - fv)


def _texture(u: np.ndarray, v: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of surface points with float32 in-plane coordinates (u, v) in metres.

    Two-colour multi-octave value noise (per-surface palette), then sparse random squares at two
    scales (corners) and random discs at three scales (blobs); nothing is periodic."""
    seed = surface.astype(np.uint32) * np.uint32(64)
    ids = np.arange(int(surface.max()) + 1 if len(surface) else 1, dtype=np.uint32) * np.uint32(64)
    zero = np.zeros_like(ids)
    pal, pal2 = _hash(ids, zero, zero), _hash(ids + np.uint32(1), zero, zero)
    dark = np.stack([0.15 + 0.5 * _byte(pal, k) for k in range(3)], -1)[surface]
    light = np.stack([0.45 + 0.55 * _byte(pal2, k) for k in range(3)], -1)[surface]
    noise = np.zeros(u.shape, np.float32)
    for octave, (scale, weight) in enumerate(((0.45, 0.45), (0.18, 0.33), (0.07, 0.22))):
        i, j, fu, fv = _cells(u, v, scale)
        su, sv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
        s, i1, j1 = seed + np.uint32(2 + octave), i + np.uint32(1), j + np.uint32(1)
        n0 = _byte(_hash(s, i, j), 0) * (1 - su) + _byte(_hash(s, i1, j), 0) * su
        n1 = _byte(_hash(s, i, j1), 0) * (1 - su) + _byte(_hash(s, i1, j1), 0) * su
        noise += np.float32(weight) * (n0 * (1 - sv) + n1 * sv)
    noise = np.clip((noise - 0.5) * 2.2 + 0.5, 0.0, 1.0)[:, None]
    rgb = dark * (1 - noise) + light * noise
    for k, scale in enumerate((0.16, 0.065)):  # sparse random squares: corners
        i, j, _, _ = _cells(u, v, scale)
        h = _hash(seed + np.uint32(10 + k), i, j)
        on = _byte(h, 3) < 0.22
        rgb[on] = np.stack([_byte(h[on], c) for c in range(3)], -1)
    for k, scale in enumerate((0.36, 0.14, 0.055)):  # random discs: blobs at three scales
        i, j, fu, fv = _cells(u, v, scale)
        h, h2 = _hash(seed + np.uint32(20 + k), i, j), _hash(seed + np.uint32(30 + k), i, j)
        radius = 0.08 + 0.16 * _byte(h2, 2)
        inside = (fu - 0.25 - 0.5 * _byte(h, 0)) ** 2 + (fv - 0.25 - 0.5 * _byte(h, 1)) ** 2 < radius ** 2
        inside &= _byte(h, 2) < 0.65
        h, h2 = h[inside], h2[inside]
        rgb[inside] = _byte(h2, 0)[:, None] * (0.35 + 0.65 * np.stack([_byte(h, 3), _byte(h2, 1), _byte(h2, 3)], -1))
    return rgb


def shade_hits(points: np.ndarray, normals: np.ndarray, geometry_ids: np.ndarray,
               contrast: float = 1.0) -> np.ndarray:
    """Colour (float32 RGB in [0, 1]) of hit points from their position, surface normal and geometry
    id; independent of the viewpoint. Surfaces are axis-aligned: the in-plane coordinates drop the
    normal's axis, so float noise in the hit point across the plane cannot flip the texture."""
    axis = np.argmax(np.abs(normals), axis=1)
    sign = np.take_along_axis(normals, axis[:, None], 1)[:, 0] > 0
    surface = geometry_ids.astype(np.int64) * 6 + axis * 2 + sign
    p = points.astype(np.float32, copy=False)
    u = np.where(axis == 0, p[:, 1], p[:, 0])  # (y, z), (x, z) or (x, y)
    v = np.where(axis == 2, p[:, 1], p[:, 2])
    light = (0.6 + 0.4 * np.abs(normals @ LIGHT)).astype(np.float32)
    rgb = _texture(u, v, surface)
    if contrast != 1.0:  # about the texture's mean grey level (0.5): weaker texture, same layout
        rgb = np.float32(0.5) + np.float32(contrast) * (rgb - np.float32(0.5))
    return rgb * light[:, None]


def build_scene() -> RaycastingScene:
    """The room (one inward-seen box) and the furniture boxes; geometry ids in this order."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    for lo, hi in (((0.0, 0.0, 0.0), ROOM), *BOXES):
        box = o3d.geometry.TriangleMesh.create_box(*(np.subtract(hi, lo)))
        box.translate(lo)
        scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(box))
    return scene


def cast(scene: RaycastingScene, K: np.ndarray, R_wc: np.ndarray, center: np.ndarray,
         u: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """Cast rays through image points (u, v) (COLMAP continuous coordinates: pixel centres at
    ``col + 0.5``) of a camera with intrinsics K, world_from_cam rotation R_wc and centre ``center``.
    Returns ``points`` (world, float32), ``normals``, ``geometry_ids`` and ``hit`` (bool) per ray."""
    import open3d as o3d

    x, y = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]  # float64 until the rays are stored
    rays = np.empty((len(x), 6), np.float32)
    rays[:, :3] = center
    for k in range(3):  # direction R_wc @ K^-1 [u, v, 1]
        rays[:, 3 + k] = x * R_wc[k, 0] + y * R_wc[k, 1] + R_wc[k, 2]
    ans = scene.cast_rays(o3d.core.Tensor(rays))
    t = ans["t_hit"].numpy()
    hit = np.isfinite(t)
    points = rays[:, 3:] * np.where(hit, t, 0)[:, None]  # float32: ~1e-6 m, far below texture detail
    points += center.astype(np.float32)
    return {"points": points, "normals": ans["primitive_normals"].numpy(),
            "geometry_ids": ans["geometry_ids"].numpy(), "hit": hit}


def render(scene: RaycastingScene, K: np.ndarray, R_wc: np.ndarray, center: np.ndarray,
           width: int, height: int, contrast: float = 1.0) -> np.ndarray:
    """(height, width, 3) uint8 image, each pixel the mean of SUPERSAMPLE^2 sub-pixel rays."""
    ss = SUPERSAMPLE
    u = (np.arange(width * ss) + 0.5) / ss  # sub-pixel centres: col + 0.25, col + 0.75 for ss = 2
    v = (np.arange(height * ss) + 0.5) / ss
    res = cast(scene, K, R_wc, center, np.tile(u, len(v)), np.repeat(v, len(u)))
    rgb = np.full((len(res["hit"]), 3), BACKGROUND, np.float32)
    for start in range(0, len(rgb), CHUNK):  # cache-sized chunks: about twice as fast as one pass
        p, n, g, h = (res[k][start:start + CHUNK] for k in ("points", "normals", "geometry_ids", "hit"))
        rgb[start:start + CHUNK][h] = shade_hits(p[h], n[h], g[h], contrast)
    sub = rgb.reshape(height, ss, width, ss, 3)
    img = sum(sub[:, i, :, j] for i in range(ss) for j in range(ss)) / np.float32(ss * ss)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def demo_cameras(width: int = 640, height: int = 480, variant: SceneVariant | str = SceneVariant.STANDARD,
                 ) -> list[dict]:
    """All cameras: ``name``, ``K``, ``R_wc`` (world_from_cam), ``center``, ``is_query``, ``unseen``
    (a query looking at what no map image sees). Every variant has the same map cameras; the
    queries are the variant's."""
    variant = SceneVariant(variant)
    rng = np.random.default_rng(20240607)
    scale = width / BASE_WIDTH
    cams = []

    def add(name: str, pose: tuple[float, ...], focal: float, is_query: bool, unseen: bool = False) -> None:
        x, y, z, yaw, pitch, roll = pose
        K = np.array([[focal * scale, 0, width / 2], [0, focal * scale, height / 2], [0, 0, 1.0]])
        cams.append({"name": name, "K": K, "R_wc": world_from_cam_rotation(yaw, pitch, roll),
                     "center": np.array([x, y, z]), "is_query": is_query, "unseen": unseen})

    n_map = 14
    for k in range(n_map):  # walk along x (the long axis), looking across the room with varying yaw
        jitter = rng.uniform(-1, 1, 5)
        pose = (1.2 + 5.6 * k / (n_map - 1) + 0.05 * jitter[0], 1.0 + 0.08 * jitter[1], 1.55 + 0.05 * jitter[2],
                90.0 + (-25.0, 0.0, 25.0)[k % 3] + 4.0 * jitter[3], -12.0 + 3.0 * jitter[4], 0.0)
        add(f"map_{k:03d}", pose, MAP_FOCAL, False)
    if variant is SceneVariant.STANDARD:
        queries = QUERIES
    else:
        queries = HARD_QUERIES + ((UNSEEN_QUERY,) if variant is SceneVariant.HARD else ())
    for k, (*pose, focal) in enumerate(queries):
        add(f"query_{k:03d}", tuple(pose), focal, True, unseen=(*pose, focal) == UNSEEN_QUERY)
    return cams


def _pose_str(cam: dict) -> str:
    """``qw qx qy qz tx ty tz`` of cam_from_world, 17 significant digits."""
    R = cam["R_wc"].T
    return " ".join(f"{x:.17g}" for x in (*quat_wxyz(R), *(-R @ cam["center"])))


def _camera_str(cam: dict, width: int, height: int) -> str:
    """``PINHOLE width height fx fy cx cy``."""
    K = cam["K"]
    return f"PINHOLE {width} {height} " + " ".join(f"{K[i, j]:.17g}" for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))


def render_demo_scene(out: Path, width: int = 640, height: int = 480,
                      variant: SceneVariant | str = SceneVariant.STANDARD) -> Path:
    """Render the demo scene into the prepared layout at ``out`` (replacing the demo's own files
    there: images/, ref_model/, queries.txt, gt_queries.txt, meta.json) and return ``out``.
    ``variant``: :class:`SceneVariant` (the hard ones for issue 13's tests)."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    variant = SceneVariant(variant)
    contrast = LOW_TEXTURE_CONTRAST if variant is SceneVariant.HARD_LOW_TEXTURE else 1.0

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "ref_model"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir()
    scene = build_scene()
    cams = demo_cameras(width, height, variant)

    def work(cam: dict) -> None:
        img = render(scene, cam["K"], cam["R_wc"], cam["center"], width, height, contrast)
        Image.fromarray(img).save(out / "images" / f"{cam['name']}.png")

    with ThreadPoolExecutor(max_workers=2) as pool:  # numpy and open3d release the GIL
        list(pool.map(work, cams))
    maps = [c for c in cams if not c["is_query"]]
    queries = [c for c in cams if c["is_query"]]
    ref = out / "ref_model"  # one shared camera; an empty POINTS2D line after each image
    (ref / "cameras.txt").write_text("# CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]\n"
                                     f"1 {_camera_str(maps[0], width, height)}\n")
    (ref / "images.txt").write_text(
        "# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME\n# POINTS2D[] as (X, Y, POINT3D_ID)\n"
        + "".join(f"{k} {_pose_str(c)} 1 {c['name']}.png\n\n" for k, c in enumerate(maps, 1)))
    (ref / "points3D.txt").write_text("# POINT3D_ID X Y Z R G B ERROR TRACK[]\n")
    (out / "queries.txt").write_text("".join(f"{c['name']}.png {_camera_str(c, width, height)}\n" for c in queries))
    (out / "gt_queries.txt").write_text("".join(f"{c['name']}.png {_pose_str(c)}\n" for c in queries))
    (out / "meta.json").write_text(json.dumps({
        "name": "demo" if variant is SceneVariant.STANDARD else f"demo-{variant}", "units": "metres",
        "generator": "vloc.demo.scene", "variant": str(variant),
        "unseen_queries": [f"{c['name']}.png" for c in queries if c["unseen"]],
        "description": f"Synthetic textured room {ROOM[0]:g} x {ROOM[1]:g} x {ROOM[2]:g} m (z up) with "
                       f"{len(BOXES)} boxes, raycast at {width}x{height}: {len(maps)} map images along the long "
                       f"axis with exact poses, {len(queries)} queries from other viewpoints with exact ground truth.",
        "num_map_images": len(maps), "num_queries": len(queries)}, indent=2) + "\n")
    logger.info("rendered demo scene: %d map and %d query images in %s", len(maps), len(queries), out)
    return out
