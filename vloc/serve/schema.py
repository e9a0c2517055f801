"""The service's request and response models (pydantic): the OpenAPI document is generated from
them, and JSON bodies, camera and prior fields are validated by them."""
from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Finite = Annotated[float, Field(allow_inf_nan=False)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CameraModel(Strict):
    """A COLMAP camera; its size must match the image. Omitted: EXIF focal length, else estimated."""

    model: str = Field(examples=["PINHOLE"])
    width: int = Field(gt=0, lt=2**31)
    height: int = Field(gt=0, lt=2**31)
    params: list[Finite | Annotated[int, Field(gt=-2**53, lt=2**53)]]


class PriorModel(Strict):
    """A believed ``cam_from_world`` pose: retrieval looks at map images within ``radius`` (map
    units) of its centre first."""

    qvec: list[Finite | int] = Field(min_length=4, max_length=4, description="w, x, y, z; not all zero")
    tvec: list[Finite | int] = Field(min_length=3, max_length=3)
    radius: Finite | int = Field(gt=0)

    @field_validator("qvec")
    @classmethod
    def _nonzero(cls, q: list[float]) -> list[float]:
        if math.sqrt(sum(float(v) ** 2 for v in q)) < 1e-12:
            raise ValueError("qvec must not be zero")
        return q


class LocalizeJSON(Strict):
    """The ``application/json`` body of a localization."""

    image_base64: str = Field(min_length=1, description="the encoded image (JPEG, PNG, ...), base64")
    camera: CameraModel | None = None
    prior: PriorModel | None = None
    name: str | None = None


class LocalizeForm(BaseModel):
    """The ``multipart/form-data`` body: an ``image`` part and optional text parts (JSON for
    camera and prior)."""

    image: bytes = Field(json_schema_extra={"format": "binary"})
    camera: str | None = Field(None, description="JSON, as in the application/json body")
    prior: str | None = Field(None, description="JSON, as in the application/json body")
    name: str | None = None


class Pose(BaseModel):
    qvec: list[float] = Field(description="w, x, y, z")
    tvec: list[float]


class Uncertainty(BaseModel):
    position_sigma: float
    rotation_sigma_deg: float


class LocalizeResponse(BaseModel):
    """A localization result. A query that cannot be localized (an undecodable image included) is
    a 200 with status ``failed`` and a reason, and no pose."""

    name: str
    status: Literal["localized", "failed"]
    reason: str
    intrinsics: Literal["given", "exif", "estimated", ""]
    num_keypoints: int
    num_matches: int
    num_inliers: int
    inlier_ratio: float
    retrieved: list[str]
    retrieved_scores: list[float] = Field(description="global similarity of each retrieved image")
    retrieval: str
    layer: str = Field(description="the preset whose features gave the result: the map's own or its fallback's")
    timings: dict[str, float] = Field(description="seconds per stage")
    camera: CameraModel | None = None
    cam_from_world: Pose | None
    covariance: list[list[float]] | None = Field(description="6x6, rotation then translation")
    map: str = Field(description="the map that localized it")


class ErrorBody(BaseModel):
    error: str


class Health(BaseModel):
    status: Literal["ok"]


class MapInfo(BaseModel):
    name: str
    summary: str
    counts: dict[str, int]
    preset: str
    vloc_version: str
    created: str
    indexed_images: int
    queue_limit: int = Field(description="localizations waiting or running before 503")


class MapList(BaseModel):
    maps: list[MapInfo]
    default: str = Field(description="the map POST /localize and GET /map use")
