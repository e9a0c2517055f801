"""Labelled image sets for DELG training.

Sources:
- a CSV with a header: columns ``image,label`` (``image`` a path relative to the image folder),
  or GLDv2's ``train.csv`` layout ``id,url,landmark_id`` (image ``IMAGES/a/b/c/abc...jpg``);
- a folder per class: every image under ``IMAGES/CLASS/`` has label ``CLASS``;
- a ``{name: label}`` mapping (map adaptation: covisibility clusters).

Training samples are augmented square crops (random resized crop, horizontal flip, brightness /
contrast jitter), ``(S, S, 3)`` uint8 RGB; evaluation images are the whole image with its longest
side resized to ``S``.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vloc.io.images import IMAGE_EXTENSIONS, read_image

logger = logging.getLogger(__name__)

CACHE_MAX_IMAGES = 2000  # decoded (downscaled) images kept in memory for small sets


@dataclass(frozen=True)
class LabelledSet:
    """Image paths under ``root`` and integer labels ``0..K-1`` (``classes[k]`` is the name of ``k``)."""

    root: Path
    names: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: list[int] | np.ndarray) -> "LabelledSet":
        return LabelledSet(self.root, tuple(self.names[i] for i in indices), tuple(self.labels[i] for i in indices),
                           self.classes)


def from_mapping(root: Path | str, labels: dict[str, str | int]) -> LabelledSet:
    """``{image name: label}`` -> a set, names sorted, labels renumbered in order of first appearance."""
    names = sorted(labels)
    classes: dict[str, int] = {}
    ints = tuple(classes.setdefault(str(labels[n]), len(classes)) for n in names)
    return LabelledSet(Path(root), tuple(names), ints, tuple(classes))


def read_csv_labels(images: Path | str, csv_path: Path | str) -> LabelledSet:
    """``image,label`` or GLDv2 ``id,...,landmark_id`` CSV; the error names the file and line."""
    images, csv_path = Path(images), Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: label CSV does not exist")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if {"image", "label"} <= fields:
            key, label_key, gldv2 = "image", "label", False
        elif {"id", "landmark_id"} <= fields:
            key, label_key, gldv2 = "id", "landmark_id", True
        else:
            raise ValueError(f"{csv_path}: header must have columns 'image,label' or GLDv2's 'id,landmark_id', "
                             f"got {sorted(fields)}")
        labels: dict[str, str] = {}
        for lineno, row in enumerate(reader, 2):
            name, label = (row.get(key) or "").strip(), (row.get(label_key) or "").strip()
            if not name or not label:
                raise ValueError(f"{csv_path}:{lineno}: empty {key!r} or {label_key!r}")
            if gldv2:
                name = f"{name[0]}/{name[1]}/{name[2]}/{name}.jpg" if len(name) >= 3 else f"{name}.jpg"
            labels[name] = label
    if not labels:
        raise ValueError(f"{csv_path}: no labelled images")
    missing = [n for n in labels if not (images / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{csv_path}: {len(missing)} images not found under {images}, e.g. {missing[:3]}")
    return from_mapping(images, labels)


def read_class_folders(images: Path | str) -> LabelledSet:
    """Every image under ``images/CLASS/`` (any depth) gets label ``CLASS``."""
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: image directory does not exist")
    labels = {p.relative_to(images).as_posix(): p.relative_to(images).parts[0] for p in images.rglob("*")
              if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and len(p.relative_to(images).parts) > 1}
    if not labels:
        raise ValueError(f"{images}: no images in class sub-folders (expected IMAGES/CLASS/*.jpg, or pass --csv)")
    return from_mapping(images, labels)


def split_train_val(data: LabelledSet, val_fraction: float, seed: int = 0) -> tuple[LabelledSet, LabelledSet]:
    """Hold out ``round(val_fraction * n)`` images (at least 1) of every class with ``n >= 3``
    images, keeping at least 2 for training; smaller classes stay whole in training (they are
    still distractors in the validation gallery)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.labels)
    train, val = [], []
    for k in range(data.num_classes):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_val = min(max(1, round(val_fraction * len(idx))), len(idx) - 2) if len(idx) >= 3 and val_fraction > 0 else 0
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return data.subset(sorted(train)), data.subset(sorted(val))


def resize_longest(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = size / max(h, w)
    if scale == 1:
        return image
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)


class ImageLoader:
    """Reads images of a set at most ``2 * size`` on the longest side, cached for small sets."""

    def __init__(self, data: LabelledSet, size: int):
        self.data, self.size = data, size
        self.cache: dict[str, np.ndarray] | None = {} if len(data) <= CACHE_MAX_IMAGES else None

    def __call__(self, name: str) -> np.ndarray:
        if self.cache is not None and name in self.cache:
            return self.cache[name]
        image = read_image(self.data.root / name)
        if max(image.shape[:2]) > 2 * self.size:
            image = resize_longest(image, 2 * self.size)
        if self.cache is not None:
            self.cache[name] = image
        return image


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator, min_area: float = 0.4) -> np.ndarray:
    """Random resized crop (area fraction ``[min_area, 1]``, aspect ``[3/4, 4/3]``) to ``(size, size)``,
    random horizontal flip, brightness / contrast jitter of +-20 %."""
    h, w = image.shape[:2]
    for _ in range(10):
        area = rng.uniform(min_area, 1.0) * h * w
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw = ch = min(h, w)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = cv2.resize(image[y0:y0 + ch, x0:x0 + cw], (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain, offset = rng.uniform(0.8, 1.2), rng.uniform(-0.2, 0.2) * 128
    return np.clip(crop.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


class BatchSampler:
    """Shuffled epochs of ``(B, S, S, 3)`` uint8 crops and ``(B,)`` int64 labels; epoch ``e`` is
    seeded by ``(seed, e)``, so a resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, data: LabelledSet, size: int, batch_size: int, seed: int = 0):
        if len(data) == 0:
            raise ValueError("empty training set")
        self.data, self.size, self.batch_size = data, size, batch_size
        self.loader = ImageLoader(data, size)
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def epoch(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.data))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            crops = np.stack([random_crop(self.loader(self.data.names[i]), self.size, rng) for i in idx])
            yield crops, np.asarray([self.data.labels[i] for i in idx], np.int64)
