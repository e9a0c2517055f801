"""Extract local features and global descriptors for a list of images (one pass, one read)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vloc.config import Preset
from vloc.features import Features, make_extractor
from vloc.io.images import ImageReadError, read_image
from vloc.retrieval import make_global_model

logger = logging.getLogger(__name__)


@dataclass
class Extracted:
    features: dict[str, Features]
    global_desc: dict[str, np.ndarray]
    skipped: dict[str, str]  # name -> reason


def extract_images(image_dir: Path, names: list[str], preset: Preset, skip_bad_images: bool,
                   batch_size: int = 1) -> Extracted:
    """Raises :class:`ImageReadError` on the first bad image unless ``skip_bad_images``.

    With ``batch_size > 1``, extractors that offer ``batch`` get that many images per call (images of
    one size run through the network together). Default 1: on this 2-core CPU, batches were no
    faster per image (docs/benchmarks.md, "Learned features").
    """
    extractor = make_extractor(preset.features)
    global_model = make_global_model(preset.global_desc)
    out = Extracted({}, {}, {})
    with tqdm(total=len(names), desc="extract", unit="img") as progress:
        for start in range(0, len(names), batch_size):
            chunk = {}
            for name in names[start:start + batch_size]:
                try:
                    chunk[name] = read_image(image_dir / name)
                except ImageReadError as exc:
                    if not skip_bad_images:
                        raise
                    logger.warning("skipping %s", exc)
                    out.skipped[name] = str(exc)
            images = list(chunk.values())
            batched = len(images) > 1 and hasattr(extractor, "batch")
            feats = extractor.batch(images) if batched else [extractor(im) for im in images]
            for (name, image), f in zip(chunk.items(), feats, strict=True):
                out.features[name] = f
                out.global_desc[name] = global_model(image)
            progress.update(len(names[start:start + batch_size]))
    return out
