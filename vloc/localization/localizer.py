"""The warm localizer: load a map once, localize many queries.

For each query: global descriptor -> FAISS top-k map images (or, with a prior pose, the most
similar map images near it) -> match local features against the 3D points those images observe
-> 2D-3D correspondences -> LO-RANSAC + refinement. A query that fails any stage is reported
with a reason and no pose. With a fallback layer (``preset.fallback``), a query that fails or
finds few inliers goes through the same steps again on the layer's features, with the global
descriptor computed once for both layers when they share the global model. No map file is
written while localizing.

The parts: :class:`~vloc.localization.layer.Layer` (one feature layer: store, retriever,
extractor, matching), :class:`~vloc.localization.retriever.ImageRetriever`, the matching
strategies of :mod:`vloc.localization.matching`, and the map's lazy
:class:`~vloc.mapping.store.MapStore`. Memory does not grow with the map beyond its FAISS index.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pycolmap

from vloc.config import FallbackConf, GlobalConf, Preset, fallback_preset
from vloc.features import Features
from vloc.io.cameras import camera_from_dict, initial_camera
from vloc.io.images import ImageReadError, exif_focal_px, read_image
from vloc.io.poses import rotation_angle_deg
from vloc.io.rigs import Rig
from vloc.localization.geo import geo_pose, map_frame
from vloc.localization.layer import Layer
from vloc.device import resolve_device
from vloc.localization.models import ModelCache
from vloc.localization.result import LocalizationResult, Prior
from vloc.localization.rig import RigLocalizationResult, localize_rig
from vloc.mapping.map_dir import FALLBACK_DIR, MapFormatError
from vloc.retrieval import make_global_model

logger = logging.getLogger(__name__)

ImageInput = str | Path | bytes | np.ndarray

__all__ = ["Localizer", "LocalizationResult", "Prior", "ImageInput", "PreparedQuery", "prepare_query"]


@dataclasses.dataclass(frozen=True)
class PreparedQuery:
    """A decoded query: ``image`` ``(H, W, 3)`` or ``(H, W)`` uint8, its camera and where the
    intrinsics came from (``"given"``, ``"exif"`` or ``"estimated"``; :meth:`Localizer.localize`
    turns ``"exif"`` into ``"map"`` when the map has a refined calibration of that EXIF camera);
    ``seconds`` spent decoding."""

    image: np.ndarray
    camera: pycolmap.Camera
    intrinsics_source: str
    seconds: float = 0.0


def _model_cache(models: ModelCache | None, device: str | None) -> ModelCache:
    if models is None:
        return ModelCache(device)
    if device is not None and resolve_device(device) != models.device:
        raise ValueError(f"device {device!r} differs from the shared model cache's ({models.device})")
    return models


class Localizer:
    """Use :meth:`load`. Calls to :meth:`localize` are serialised by a lock (thread-safe)."""

    def __init__(self, map_dir: Path | str, preset: str | Preset | None = None, models: ModelCache | None = None,
                 device: str | None = None):
        self.map_dir = Path(map_dir)
        self.models = _model_cache(models, device)
        self.layer = Layer.open(self.map_dir, preset, self.models)
        self.preset, self.manifest, self.store = self.layer.preset, self.layer.manifest, self.layer.store
        self.geo_frame = map_frame(self.manifest)  # east-north-up about a WGS84 origin, or None
        # (width, height, EXIF focal to 0.1 px) -> the map's refined calibration of that camera
        self.exif_cameras = {(c["width"], c["height"], round(c["exif_focal_px"], 1)): camera_from_dict(
            {k: c[k] for k in ("model", "width", "height", "params")}, f"{self.map_dir}: exif_cameras")
            for c in self.manifest.exif_cameras}
        self.fallback = self._open_fallback()
        self._global_models: dict[GlobalConf, object] = {
            layer.global_conf: self.models.get("global", layer.global_conf, make_global_model) for layer in self.layers}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vloc-global")

    def _open_fallback(self) -> Layer | None:
        """The map's fallback layer when the preset asks for one."""
        layer = fallback_preset(self.preset)
        if layer is None:
            return None
        layer_dir = self.map_dir / FALLBACK_DIR
        if not layer_dir.is_dir():
            raise MapFormatError(f"{self.map_dir}: preset {self.preset.name!r} localizes weak queries again on a "
                                 f"{layer.name!r} layer, but the map has none ({FALLBACK_DIR}/ is missing); "
                                 f"rebuild it with --preset {self.preset.name}")
        return Layer.open(layer_dir, layer, self.models)

    @classmethod
    def load(cls, map_dir: Path | str, preset: str | Preset | None = None,
             models: ModelCache | None = None, device: str | None = None) -> "Localizer":
        """Load ``map_dir``; ``preset`` defaults to the one the map was built with. Localizers
        given the same ``models`` share the models their presets have in common. ``device``:
        ``auto`` (the default: CUDA when torch sees a GPU), ``cpu``, ``cuda`` or ``cuda:N``, where
        the torch models run (given with ``models``, it must be theirs)."""
        return cls(map_dir, preset, models, device)

    @property
    def device(self):
        """The torch device this localizer's models run on."""
        return self.models.device

    @property
    def layers(self) -> list[Layer]:
        return [self.layer] if self.fallback is None else [self.layer, self.fallback]

    @property
    def num_images(self) -> int:
        return len(self.store)

    @property
    def prior_radius(self) -> float:
        """Default prior radius: 5x the median distance from each map image to its nearest
        neighbour (map units), computed when the map was written."""
        return self.layer.prior_radius

    def localize(
        self, image: ImageInput | PreparedQuery, camera: pycolmap.Camera | dict | None = None,
        prior: Prior | LocalizationResult | None = None, name: str | None = None,
    ) -> LocalizationResult:
        """Localize one image.

        Args:
            image: a path, encoded bytes (JPEG, PNG, ...), a ``(H, W)`` / ``(H, W, 3)`` uint8
                RGB array, or a :class:`PreparedQuery` (then ``camera`` must be None).
            camera: a pycolmap camera, a dict ``{"model", "width", "height", "params"}``, or None:
                the EXIF focal length when the file or bytes carry one (the map's refined
                calibration instead when SfM calibrated a camera with that EXIF focal and image
                size: :meth:`calibrated`), else the focal length is estimated with the pose.
                ``result.intrinsics_source`` says which.
            prior: restrict retrieval to map images near a believed pose: a :class:`Prior`, or
                the previous result (its pose, within :attr:`prior_radius`; a failed result
                means no prior). When the nearby images fail, global retrieval is tried.
        Returns:
            a :class:`LocalizationResult`; on any failure ``success`` is False and ``reason`` says why.
        """
        t0 = time.perf_counter()
        prior = self._prior(prior)
        if name is None:
            name = Path(image).name if isinstance(image, (str, Path)) else "query"
        if isinstance(image, PreparedQuery):
            if camera is not None:
                raise ValueError(f"{name}: a prepared query carries its camera; pass camera=None")
            query, t0 = image, t0 - image.seconds
        else:
            try:
                query = prepare_query(image, camera, name)
            except (ImageReadError, ValueError) as exc:
                return LocalizationResult(name, False, str(exc))
        array, camera, source = query.image, query.camera, query.intrinsics_source
        if source == "exif":
            camera, source = self.calibrated(camera)
        with self._lock:
            result = self._localize_layers(array, camera, source, name, prior)
        result.timings = {"read": time.perf_counter() - t0 - sum(result.timings.values()), **result.timings}
        return self._with_geo(result)

    def localize_features(
        self, features: Features, global_descriptor: np.ndarray, camera: pycolmap.Camera | dict,
        prior: Prior | LocalizationResult | None = None, name: str = "query",
    ) -> LocalizationResult:
        """Localize from features the caller extracted (the map's own local features, same
        configuration) and its raw ``(D_g,)`` global descriptor, on the map's first layer only
        (a fallback layer needs the image). ``camera`` is required: there is no image for EXIF."""
        if isinstance(camera, dict):
            camera = camera_from_dict(camera, f"{name}: camera")
        dim = self.store.descriptor_dim
        if features.descriptors.ndim != 2 or (len(features) and features.descriptors.shape[1] != dim):
            raise ValueError(f"{name}: descriptors of shape {features.descriptors.shape}, the map's are (N, {dim})")
        with self._lock:
            result = self.layer.localize(None, camera, "given", name, np.asarray(global_descriptor, np.float32),
                                         self._prior(prior), feats=features)
        return self._with_geo(result)

    def localize_rig(self, images: dict[str, ImageInput], rig: Rig,
                     cameras: dict[str, pycolmap.Camera | dict] | None = None,
                     name: str = "rig") -> RigLocalizationResult:
        """Localize the images one rig capture holds, together (:mod:`vloc.localization.rig`).

        Args:
            images: camera name -> image (as :meth:`localize` takes it), one for every camera of ``rig``.
            rig: the cameras' poses on the rig (:class:`vloc.io.rigs.Rig`, from ``read_rig``).
            cameras: camera name -> intrinsics; a camera not named takes its EXIF focal length.
        Raises:
            ValueError: a camera of the rig without an image (or an image of no camera of it),
                intrinsics that cannot be had; ImageReadError: an image that does not decode.
        """
        with self._lock:
            result = localize_rig(self, images, rig, cameras, name)
        if self.geo_frame is not None and result.success:
            result.geo = geo_pose(result.rig_from_world, result.covariance, self.geo_frame)
            for res in result.cameras.values():
                self._with_geo(res)
        return result

    def global_descriptor(self, image: np.ndarray) -> np.ndarray:
        """The raw ``(D_g,)`` global descriptor of an ``(H, W[, 3])`` uint8 image for the first layer."""
        return self._global_models[self.layer.global_conf](image)

    def calibrated(self, camera: pycolmap.Camera) -> tuple[pycolmap.Camera, str]:
        """A query camera from EXIF -> the map's refined calibration of the camera with the same
        EXIF focal length and size (``"map"``) when SfM made one, else itself (``"exif"``): EXIF
        focal lengths can be far off (lund: 24 %), and a query must agree with the map's."""
        key = (camera.width, camera.height, round(float(camera.params[0]), 1))
        if key in self.exif_cameras:
            return pycolmap.Camera(self.exif_cameras[key].todict()), "map"
        return camera, "exif"

    def _with_geo(self, result: LocalizationResult) -> LocalizationResult:
        """A localized result on a geo-registered map gets its position in WGS84."""
        if self.geo_frame is not None and result.success and result.cam_from_world is not None:
            result.geo = geo_pose(result.cam_from_world, result.covariance, self.geo_frame)
        return result

    def _prior(self, prior: Prior | LocalizationResult | None) -> Prior | None:
        return Prior.from_result(prior, self.prior_radius) if isinstance(prior, LocalizationResult) else prior

    def _localize_layers(self, image: np.ndarray, camera: pycolmap.Camera, source: str, name: str,
                         prior: Prior | None) -> LocalizationResult:
        """Localize on the map's own layer; when that fails or finds fewer inliers than
        ``preset.fallback.below_inliers``, again on the fallback layer (:func:`choose_layer_result`
        keeps one result; two strongly supported poses that disagree fail as ambiguous). The
        global descriptor runs beside the first layer's local features (torch and OpenCV release
        the GIL) and is reused by a layer with the same global model."""
        raw = {self.layer.global_conf: self._pool.submit(self._global_models[self.layer.global_conf], image)}
        res = self.layer.localize(image, camera, source, name, raw[self.layer.global_conf], prior)
        if self.fallback is None or (res.success and res.num_inliers >= self.preset.fallback.below_inliers):
            return res
        conf = self.fallback.global_conf
        layer_raw = raw[conf] if conf in raw else self._global_models[conf](image)
        again = self.fallback.localize(image, camera, source, name, layer_raw, prior)
        chosen = choose_layer_result(res, again, self.preset.fallback)
        chosen.timings = {k: res.timings.get(k, 0.0) + again.timings.get(k, 0.0)
                          for k in dict.fromkeys([*res.timings, *again.timings])}
        if not res.success and not again.success:
            chosen.reason = f"{res.layer}: {res.reason}; {again.layer}: {again.reason}"
        logger.debug("%s: %s gave %d inliers, fallback %s %d; kept %s", name, res.layer, res.num_inliers,
                     again.layer, again.num_inliers, chosen.layer)
        return chosen


def choose_layer_result(res: LocalizationResult, again: LocalizationResult,
                        conf: FallbackConf) -> LocalizationResult:
    """The map layer's result ``res`` (weak or failed) or the fallback layer's ``again``.

    One succeeded: that one. Both, with rotations within ``conf.max_disagreement_deg``: the one
    with more inliers. Both, apart: the fallback's pose is only a rival when it has the support
    the map layer lacked (``conf.below_inliers``); then nothing supports one pose over the other
    and the query fails as ambiguous, else the map layer's pose stands."""
    if not (res.success and again.success):
        return again if again.success else res
    apart = rotation_angle_deg(res.cam_from_world, again.cam_from_world)
    if apart <= conf.max_disagreement_deg:
        return again if again.num_inliers >= res.num_inliers else res
    if again.num_inliers < conf.below_inliers:
        return res
    return dataclasses.replace(again, success=False, cam_from_world=None, covariance=None, reason=(
        f"ambiguous: {res.layer} ({res.num_inliers} inliers) and {again.layer} ({again.num_inliers} "
        f"inliers) poses differ by {apart:.1f} deg (> {conf.max_disagreement_deg:g})"))


def prepare_query(image: ImageInput, camera: pycolmap.Camera | dict | None, name: str) -> PreparedQuery:
    """Decode the image and settle the camera.

    Raises:
        ImageReadError: the image cannot be decoded (the decoder's message).
        ValueError: a bad array or camera, or a camera whose size is not the image's.
    """
    t0 = time.perf_counter()
    array, camera, source = _decode(image, camera, name)
    return PreparedQuery(array, camera, source, time.perf_counter() - t0)


def _decode(image: ImageInput, camera: pycolmap.Camera | dict | None,
            name: str) -> tuple[np.ndarray, pycolmap.Camera, str]:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(f"{name}: expected a (H, W) or (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
        array, exif_source = image, None
    elif isinstance(image, (bytes, bytearray, memoryview)):
        exif_source = io.BytesIO(bytes(image))
        array = read_image(exif_source, name=name)
    elif isinstance(image, (str, Path)):
        array, exif_source = read_image(image), image
    else:
        raise ValueError(f"{name}: image must be a path, bytes or a numpy array, not {type(image).__name__}")
    h, w = array.shape[:2]
    if isinstance(camera, dict):
        camera = camera_from_dict(camera, f"{name}: camera")
    if camera is not None:
        if (camera.width, camera.height) != (w, h):
            raise ValueError(f"{name}: camera is {camera.width}x{camera.height} but the image is {w}x{h}")
        return array, camera, "given"
    focal = exif_focal_px(exif_source) if exif_source is not None else None
    return array, initial_camera(w, h, focal), "exif" if focal is not None else "estimated"
