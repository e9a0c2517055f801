"""Synthetic maps of any size, made without image processing, for tests and scale benchmarks.

A corridor of cameras ``spacing`` apart along the world x axis (all looking along +z, PINHOLE
640x480, f = 500) in front of random 3D points in a slab 3 to 4.5 m away. Each map image keeps
``keypoints_per_image`` of the points it sees, projected exactly (COLMAP pixel convention, as
the model's points2D), plus a few keypoints that observe nothing; each point has a random unit
128-D descriptor and every observation a noisy copy of it. An image's raw global descriptor is a
random Fourier feature of its camera's x position (inner products fall with distance along the
corridor), so retrieval finds the neighbouring cameras. :func:`project_query` makes the features
and global descriptor of a query camera between map cameras.

The COLMAP model is written as text (numpy formatting, no per-point Python calls), read back by
pycolmap and written into the map with the real :func:`vloc.mapping.map_dir.write_map`.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from vloc.config import get_preset
from vloc.features.base import Features
from vloc.mapping.manifest import Manifest, Source
from vloc.mapping.map_dir import atomic_map_dir, write_map
from vloc.retrieval.index import Whitening

WIDTH, HEIGHT, FOCAL = 640, 480, 500.0
DESCRIPTOR_DIM, GLOBAL_DIM = 128, 1280  # as SIFT and the default global model


@dataclass(frozen=True, kw_only=True)
class SyntheticScene:
    num_images: int
    spacing: float = 0.1  # metres between neighbouring cameras
    points_per_metre: int = 60
    keypoints_per_image: int = 60
    unobserved_per_image: int = 10
    descriptor_noise: float = 0.05
    global_length_scale: float = 1.0  # metres over which global descriptors decorrelate
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_images < 2:
            raise ValueError(f"a synthetic map needs at least 2 images, not {self.num_images}")

    @property
    def camera(self) -> pycolmap.Camera:
        return pycolmap.Camera(model="PINHOLE", width=WIDTH, height=HEIGHT,
                               params=[FOCAL, FOCAL, WIDTH / 2, HEIGHT / 2], camera_id=1)

    def centre(self, x: float) -> np.ndarray:
        return np.array([x, 0.0, 0.0])

    def rng(self, stream: int) -> np.random.Generator:
        """The scene's random stream ``stream`` (0: points, 1: global descriptors, 2: map keypoints)."""
        return np.random.default_rng([self.seed, stream])

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """``(P, 3)`` positions and ``(P, D)`` unit descriptors of the scene's points."""
        rng = self.rng(0)
        length = self.spacing * (self.num_images - 1) + 8.0
        n = int(length * self.points_per_metre)
        xyz = np.stack([rng.uniform(-4.0, length - 4.0, n), rng.uniform(-1.5, 1.5, n), rng.uniform(3.0, 4.5, n)], 1)
        return xyz[np.argsort(xyz[:, 0])], _unit(rng.standard_normal((n, DESCRIPTOR_DIM)))

    def global_descriptor(self, x: np.ndarray | float) -> np.ndarray:
        """``(N, GLOBAL_DIM)`` (or ``(GLOBAL_DIM,)``) unit raw global descriptors at positions ``x``."""
        rng = self.rng(1)
        freq = rng.standard_normal(GLOBAL_DIM // 2) / self.global_length_scale
        phase = rng.uniform(0, 2 * np.pi, GLOBAL_DIM // 2)
        arg = np.atleast_1d(x)[:, None] * freq + phase
        out = _unit(np.concatenate([np.cos(arg), np.sin(arg)], axis=1)).astype(np.float32)
        return out if np.ndim(x) else out[0]

    def visible(self, xyz: np.ndarray, x: float) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the points ``xyz`` (sorted by x, as :meth:`points` gives them) a camera at ``x``
        sees, and their ``(M, 2)`` pixel positions."""
        reach = 4.5 * WIDTH / 2 / FOCAL + 0.1  # the farthest a visible point can be along x
        lo, hi = np.searchsorted(xyz[:, 0], [x - reach, x + reach])
        cam = xyz[lo:hi] - self.centre(x)
        uv = FOCAL * cam[:, :2] / cam[:, 2:] + [WIDTH / 2, HEIGHT / 2]
        inside = np.flatnonzero((uv[:, 0] > 1) & (uv[:, 0] < WIDTH - 1) & (uv[:, 1] > 1) & (uv[:, 1] < HEIGHT - 1))
        return lo + inside, uv[inside]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def image_name(i: int) -> str:
    return f"synthetic-{i:07d}.png"


def write_synthetic_map(out: Path, scene: SyntheticScene, *, overwrite: bool = False) -> Manifest:
    """Write the map of ``scene`` to ``out`` (atomically, like every map); returns its manifest."""
    xyz, point_desc = scene.points()
    rng = scene.rng(2)
    features: dict[str, Features] = {}
    image_lines, tracks = [], [[] for _ in range(len(xyz))]
    for i in range(scene.num_images):
        x = scene.spacing * i
        seen, uv = scene.visible(xyz, x)
        keep = rng.choice(len(seen), min(scene.keypoints_per_image, len(seen)), replace=False)
        seen, uv = seen[keep], uv[keep]
        extra = np.stack([rng.uniform(1, WIDTH - 1, scene.unobserved_per_image),
                          rng.uniform(1, HEIGHT - 1, scene.unobserved_per_image)], 1)
        keypoints = np.concatenate([uv, extra]).astype(np.float32)
        desc = np.concatenate([point_desc[seen] + scene.descriptor_noise * rng.standard_normal(
            (len(seen), DESCRIPTOR_DIM)), rng.standard_normal((len(extra), DESCRIPTOR_DIM))])
        features[image_name(i)] = Features(keypoints, _unit(desc).astype(np.float32),
                                           np.ones(len(keypoints), np.float32), (WIDTH, HEIGHT))
        ids = np.concatenate([seen + 1, np.full(len(extra), -1)])  # COLMAP point3D ids start at 1
        for idx, p in enumerate(seen):
            tracks[p].append(f"{i + 1} {idx}")
        # images.txt keeps the keypoints' float32 values, so the model and the features agree exactly
        points2D = " ".join(f"{u!r} {v!r} {int(pid)}" for (u, v), pid in zip(keypoints.tolist(), ids, strict=True))
        image_lines.append(f"{i + 1} 1 0 0 0 {-x!r} 0 0 1 {image_name(i)}\n{points2D}\n")
    with tempfile.TemporaryDirectory(prefix="vloc-synthetic-") as text:
        cam = scene.camera
        params = " ".join(repr(float(p)) for p in cam.params)
        Path(text, "cameras.txt").write_text(f"1 PINHOLE {WIDTH} {HEIGHT} {params}\n")
        Path(text, "images.txt").write_text("".join(image_lines))
        Path(text, "points3D.txt").write_text("".join(
            f"{p + 1} {a!r} {b!r} {c!r} 128 128 128 0 {' '.join(t)}\n"
            for p, ((a, b, c), t) in enumerate(zip(xyz.tolist(), tracks, strict=True)) if t))
        rec = pycolmap.Reconstruction(text)
    raw = scene.global_descriptor(scene.spacing * np.arange(scene.num_images))
    global_desc = {image_name(i): raw[i] for i in range(scene.num_images)}
    sift = get_preset("sift")
    # PCA over every 5th image keeps the fit quick at 10^5 images; the corridor's statistics are uniform
    whitening = Whitening.learn(raw[::5] if len(raw) > 2000 else raw, sift.global_desc.pca_dim)
    with atomic_map_dir(out, overwrite) as tmp:
        manifest = write_map(tmp, rec, features, global_desc, whitening, sift.to_dict(),
                             Source(mode="synthetic"))
    return manifest


@dataclass(frozen=True)
class SyntheticQuery:
    features: Features
    global_descriptor: np.ndarray  # (GLOBAL_DIM,)
    cam_from_world: pycolmap.Rigid3d
    camera: pycolmap.Camera


def project_query(scene: SyntheticScene, x: float, num_keypoints: int = 300, seed: int = 1) -> SyntheticQuery:
    """A query camera at ``x`` along the corridor: exact projections of the points it sees."""
    xyz, point_desc = scene.points()
    rng = np.random.default_rng([scene.seed, 3, seed])
    seen, uv = scene.visible(xyz, x)
    keep = rng.choice(len(seen), min(num_keypoints, len(seen)), replace=False)
    desc = _unit(point_desc[seen[keep]] + scene.descriptor_noise * rng.standard_normal((len(keep), DESCRIPTOR_DIM)))
    feats = Features(uv[keep].astype(np.float32), desc.astype(np.float32), np.ones(len(keep), np.float32),
                     (WIDTH, HEIGHT))
    pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), -scene.centre(x))
    return SyntheticQuery(feats, scene.global_descriptor(x), pose, scene.camera)
