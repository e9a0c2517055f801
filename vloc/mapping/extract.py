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


def extract_images(image_dir: Path, names: list[str], preset: Preset, skip_bad_images: bool) -> Extracted:
    """Raises :class:`ImageReadError` on the first bad image unless ``skip_bad_images``.

    One image per extractor call: batches of same-size images through the learned extractors'
    ``batch`` were slower per image on a 2-core CPU (docs/benchmarks.md, "Presets and learned
    features")."""
    extractor = make_extractor(preset.features)
    global_model = make_global_model(preset.global_desc)
    out = Extracted({}, {}, {})
    for name in tqdm(names, desc="extract", unit="img"):
        try:
            image = read_image(image_dir / name)
        except ImageReadError as exc:
            if not skip_bad_images:
                raise
            logger.warning("skipping %s", exc)
            out.skipped[name] = str(exc)
            continue
        out.features[name] = extractor(image)
        out.global_desc[name] = global_model(image)
    return out
