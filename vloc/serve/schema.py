"""The service's request and response models (pydantic): the OpenAPI document is generated from
them, and JSON bodies, camera and prior fields are validated by them. What the schema admits the
server accepts: every COLMAP camera model is named with its exact parameter count, every number
has its bounds, and ``image_base64`` is valid base64 by its pattern."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import pycolmap
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, create_model, field_validator


def _whole(value: Any) -> Any:
    """A float with no fraction is an integer to JSON Schema (``6.0`` is ``6``)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Every number is within +-2^53: a bound that floats and integers meet exactly (a decimal bound near
# a float's range is not, and a fuzzer's integer just past it was accepted once it rounded to a float).
BOUND = 2**53


def _in_bounds(value: Any) -> Any:
    """An integer is compared exactly, before it is rounded to a float that would pass the bounds."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > BOUND:
        raise ValueError(f"{value:.3e} is outside +-2^53")
    return value


Number = Annotated[float, Field(allow_inf_nan=False, ge=-BOUND, le=BOUND), BeforeValidator(_in_bounds)]
Positive = Annotated[float, Field(allow_inf_nan=False, gt=0, le=BOUND), BeforeValidator(_in_bounds)]
Size = Annotated[int, Field(gt=0, lt=2**31), BeforeValidator(_whole)]

# Base64 (RFC 4648, standard alphabet, padded) with spaces and line breaks allowed anywhere, at
# least one 4-character group. The server removes exactly these whitespace characters and decodes.
B64_SPACE = "[ \t\r\n]"
_C = f"[A-Za-z0-9+/]{B64_SPACE}*"
BASE64_PATTERN = (f"^{B64_SPACE}*(?:(?:{_C}){{4}})*(?:(?:{_C}){{4}}|(?:{_C}){{3}}={B64_SPACE}*|"
                  f"(?:{_C}){{2}}={B64_SPACE}*={B64_SPACE}*)$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def camera_models() -> dict[str, int]:
    """COLMAP camera model name -> its number of parameters (pycolmap's list)."""
    return {name: len(pycolmap.Camera(model=model_id, width=1, height=1).params_info.split(","))
            for name, model_id in pycolmap.CameraModelId.__members__.items() if name != "INVALID"}


def _camera_class(name: str, n: int) -> type[Strict]:
    return create_model(f"Camera_{name}", __base__=Strict, __doc__=f"A {name} camera: {n} parameters in COLMAP's order.",
                        model=(Literal[name], ...), width=(Size, ...), height=(Size, ...),
                        params=(list[Number], Field(min_length=n, max_length=n)))


_CAMERAS = tuple(_camera_class(name, n) for name, n in camera_models().items())


class CameraModel(RootModel[Annotated[Union[_CAMERAS], Field(discriminator="model")]]):  # type: ignore[valid-type]
    """A COLMAP camera ``{"model", "width", "height", "params"}``; its size must match the image.
    Omitted: EXIF focal length, else estimated."""

    def as_dict(self) -> dict[str, Any]:
        return self.root.model_dump()


class PriorModel(Strict):
    """A believed ``cam_from_world`` pose: retrieval looks at map images within ``radius`` (map
    units) of its centre first."""

    qvec: list[Number] = Field(min_length=4, max_length=4, description="w, x, y, z; not all zero",
                               json_schema_extra={"contains": {"anyOf": [{"exclusiveMinimum": 0},
                                                                         {"exclusiveMaximum": 0}]}})
    tvec: list[Number] = Field(min_length=3, max_length=3)
    radius: Positive

    @field_validator("qvec")
    @classmethod
    def _nonzero(cls, q: list[float]) -> list[float]:
        if max(abs(float(v)) for v in q) == 0:
            raise ValueError("qvec must not be zero")
        return q


class LocalizeJSON(Strict):
    """The ``application/json`` body of a localization."""

    image_base64: str = Field(pattern=BASE64_PATTERN,
                              description="the encoded image (JPEG, PNG, ...), base64 (spaces and line breaks ignored)")
    camera: CameraModel | None = None
    prior: PriorModel | None = None
    name: str | None = None


class LocalizeForm(BaseModel):
    """The ``multipart/form-data`` body: an ``image`` part and optional parts ``camera`` and
    ``prior`` (JSON, as in the application/json body) and ``name`` (text); no other parts."""

    model_config = ConfigDict(extra="forbid")

    image: bytes = Field(min_length=1, json_schema_extra={"format": "binary"})
    camera: CameraModel | None = None
    prior: PriorModel | None = None
    name: str | None = None


class Pose(BaseModel):
    qvec: list[float] = Field(description="w, x, y, z")
    tvec: list[float]


class Uncertainty(BaseModel):
    position_sigma: float
    rotation_sigma_deg: float


class GeoAnswer(BaseModel):
    latitude: float = Field(description="WGS84 degrees")
    longitude: float = Field(description="WGS84 degrees")
    altitude: float = Field(description="metres, as the map's GPS source gave them")
    heading_deg: float = Field(description="compass bearing of the optical axis: 0 north, 90 east")
    horizontal_sigma_m: float | None = Field(description="1-sigma horizontal position (root of the east and "
                                             "north variances), from the pose covariance")


class LocalizeResponse(BaseModel):
    """A localization result. An image that decodes but cannot be localized is a 200 with status
    ``failed`` and a reason, and no pose (an image that does not decode is a 422)."""

    name: str
    status: Literal["localized", "failed"]
    reason: str
    intrinsics: Literal["given", "exif", "map", "estimated", ""]
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
    geo: GeoAnswer | None = Field(None, description="the pose in WGS84, for a map built with --gps; "
                                  "null for other maps and failed queries")


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
