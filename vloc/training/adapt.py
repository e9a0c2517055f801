"""Map-adaptive training: fine-tune the DELG heads on a map's own images, labelled by covisibility.

``adapt_map(MAP)``:

1. labels the map's indexed images by covisibility clusters of its COLMAP model
   (:mod:`vloc.training.covisibility`: every two images of a label share enough 3D points);
2. trains DELG on them (:class:`~vloc.training.trainer.Trainer`: ArcFace on the global head plus
   the attention and reconstruction losses, backbone frozen by default);
3. recomputes the map's global descriptors with the adapted model (multi-scale, as the
   ``delg`` global model does for queries), learns the PCA-whitening again, rebuilds the FAISS
   index, stores the weights as ``MAP/delg-adapted.pt`` and records in the manifest that the map's
   global descriptor is ``delg`` with those weights (plus an ``adaptation`` entry: clusters,
   training configuration and losses). The new map is written beside the old one and renamed
   into place: a failure at any step leaves the old map as it was.

A map built with the default EfficientNet-Lite0 GeM descriptor can be adapted too: adaptation
then switches it to DELG-small, whose backbone is the same ImageNet EfficientNet-Lite0, with GeM
and the whitening FC starting from the identity (the unadapted model is the GeM baseline plus a
learnable p) and trained heads. A map whose global descriptor is already DELG is fine-tuned from
its current weights and keeps its variant. The map's local features are not changed.

:class:`~vloc.localization.localizer.Localizer` loads an adapted map with its own global model
(:func:`vloc.mapping.map_dir.map_preset`), whatever preset is asked for.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vloc.config import GlobalConf
from vloc.io.images import read_image
from vloc.mapping.manifest import Manifest
from vloc.mapping.map_dir import (
    MapData,
    atomic_map_dir,
    copy_with_global,
    global_conf_in_map,
    load_map,
    read_manifest,
    stored_global_conf,
)
from vloc.retrieval import make_global_model
from vloc.retrieval.index import Whitening
from vloc.training.covisibility import covisibility_clusters
from vloc.training.data import from_mapping
from vloc.training.trainer import MODEL_FILE, TrainConf, Trainer

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "delg-adapted.pt"


@dataclass(frozen=True)
class AdaptConf:
    """Clustering rule and training settings for :func:`adapt_map`. Every map image is a training
    image (no validation split: the map is all there is; measure on held-out queries instead)."""

    train: TrainConf = field(default_factory=lambda: TrainConf(image_size=320, batch_size=8, epochs=20, lr=1e-3,
                                                              val_fraction=0.0))
    min_ratio: float = 0.5  # covisibility: shared / min(points of either image)
    min_shared: int = 20  # covisibility: shared 3D points


def map_images_dir(manifest: Manifest, images: Path | str | None, map_dir: Path) -> Path:
    """The folder holding the map's images: ``images`` if given, else the one the map was built from."""
    path = Path(images) if images is not None else manifest.source.images
    if path is None:
        raise ValueError(f"{map_dir}: the manifest does not say where the map's images are (map built by an older "
                         "vloc); pass --images DIR")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: the map's image folder does not exist (pass --images DIR)")
    return path


def _labels(data: MapData, conf: AdaptConf, map_dir: Path) -> dict[str, int]:
    clusters = covisibility_clusters(data.reconstruction, conf.min_ratio, conf.min_shared)
    labels = {n: clusters[n] for n in data.global_names if n in clusters}
    if len(set(labels.values())) < 2:
        raise ValueError(f"{map_dir}: all {len(labels)} map images form one covisibility cluster; nothing to "
                         f"separate (raise --min-ratio above {conf.min_ratio})")
    return labels


def adapt_map(map_dir: Path | str, conf: AdaptConf = AdaptConf(), images: Path | str | None = None) -> dict:
    """Adapt the map in place (atomically); returns the manifest's ``adaptation`` entry."""
    map_dir = Path(map_dir)
    data = load_map(map_dir)
    image_dir = map_images_dir(data.manifest, images, map_dir)
    missing = [n for n in data.global_names if not (image_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{image_dir}: {len(missing)} of the map's images are missing, e.g. {missing[:3]}")
    labels = _labels(data, conf, map_dir)
    old = stored_global_conf(data.manifest)
    init = None
    train_conf = conf.train
    if old.name == "delg":
        init = global_conf_in_map(old, map_dir).weights
        train_conf = dataclasses.replace(train_conf, variant=old.variant or train_conf.variant)
    sizes = np.bincount(list(labels.values()))
    logger.info("%s: %d images in %d covisibility clusters (sizes %s)", map_dir, len(labels), len(sizes),
                sizes.tolist())
    with tempfile.TemporaryDirectory(prefix="vloc-adapt-") as work:
        trainer = Trainer(train_conf, from_mapping(image_dir, labels), from_mapping(image_dir, {}), work, init)
        history = trainer.fit()
        weights = Path(work) / MODEL_FILE
        new_conf = dataclasses.replace(old, name="delg", variant=train_conf.variant, weights=WEIGHTS_FILE)
        model = make_global_model(dataclasses.replace(new_conf, weights=str(weights)))
        raw = np.stack([model(read_image(image_dir / n)) for n in tqdm(data.global_names, desc="describe map",
                                                                       unit="img")])
        clusters = dict(count=int(len(sizes)), sizes=sizes.tolist(), min_ratio=conf.min_ratio,
                        min_shared=conf.min_shared)
        adaptation = dict(
            weights=WEIGHTS_FILE, sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
            previous_global_desc=dataclasses.asdict(old), clusters=clusters, train=dataclasses.asdict(train_conf),
            init=str(init) if init else "imagenet",
            losses_first_epoch=history[1]["losses"] if len(history) > 1 else None,
            losses_last_epoch=history[-1].get("losses"))
        manifest = data.manifest.replace(
            adaptation=adaptation, preset=dict(data.manifest.preset, global_desc=dataclasses.asdict(new_conf)))
        with atomic_map_dir(map_dir, overwrite=True) as tmp:
            copy_with_global(map_dir, tmp, raw, Whitening.learn(raw, new_conf.pca_dim), manifest)
            shutil.copyfile(weights, tmp / WEIGHTS_FILE)
    logger.info("%s adapted: global descriptor delg/%s with %s", map_dir, train_conf.variant, WEIGHTS_FILE)
    return adaptation


def adapted_global_conf(map_dir: Path | str) -> GlobalConf:
    """The global descriptor configuration a map uses, weights path resolved."""
    return global_conf_in_map(stored_global_conf(read_manifest(Path(map_dir))), Path(map_dir))
