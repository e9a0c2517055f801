"""Request bodies of ``POST /localize``: raw image bytes (fields in the query string),
``multipart/form-data`` (RFC 7578: part ``image`` and text parts) or JSON with ``image_base64``;
the camera and prior fields validated by the pydantic models of :mod:`vloc.serve.schema`."""
from __future__ import annotations

import base64
import json
import re
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Any

import numpy as np
import pycolmap
from pydantic import ValidationError

from vloc.io.cameras import camera_from_dict
from vloc.io.poses import rigid_from_qt
from vloc.localization.result import Prior
from vloc.serve.schema import B64_SPACE, CameraModel, LocalizeJSON, PriorModel

FIELDS = ("camera", "prior", "name")  # besides the image, in the query string, form parts or JSON keys
_PRIOR_SHAPE = 'prior must be a JSON object {"qvec": [w, x, y, z], "tvec": [x, y, z], "radius": r > 0}'


class HttpError(Exception):
    """A request we answer with ``status`` and ``{"error": message}`` (plus ``extra`` keys)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    where = ".".join(str(p) for p in e["loc"] if not isinstance(p, str) or p not in ("float", "int"))
    return f"{where}: {e['msg']}" if where else e["msg"]


def parse_camera(value: Any) -> pycolmap.Camera | None:
    """``None`` or ``{"model", "width", "height", "params"}`` -> a camera; HttpError 400 otherwise."""
    if value is None:
        return None
    try:
        cam = value if isinstance(value, CameraModel) else CameraModel.model_validate(value)
    except ValidationError as exc:
        raise HttpError(400, 'camera must be a JSON object {"model", "width", "height", "params"}: a COLMAP '
                        "model with its number of finite params within +-2^53, positive integer width and height "
                        f"({_first_error(exc)})") from None
    try:
        return camera_from_dict(cam.as_dict())
    except (ValueError, TypeError, OverflowError) as exc:
        raise HttpError(400, str(exc)) from exc


def parse_prior(value: Any) -> Prior | None:
    """``None`` or ``{"qvec": [w, x, y, z], "tvec": [x, y, z], "radius": r}`` -> a Prior; HttpError 400 otherwise."""
    if value is None:
        return None
    try:
        p = value if isinstance(value, PriorModel) else PriorModel.model_validate(value)
    except ValidationError as exc:
        raise HttpError(400, f"{_PRIOR_SHAPE} with finite numbers within +-2^53 and a non-zero qvec ({_first_error(exc)})") from None
    return Prior(rigid_from_qt(np.array(p.qvec, float), np.array(p.tvec, float)), float(p.radius))


def json_text(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise HttpError(400, f"{what} is not valid JSON ({exc})") from exc


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[bytes, str | None]]:
    """``multipart/form-data`` -> ``{part name: (content, filename)}`` (RFC 7578), by boundary split."""
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= 200:
        raise HttpError(400, "multipart/form-data without a valid boundary parameter")
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0 or (start > 0 and body[start - 2:start] != b"\r\n"):
        raise HttpError(400, "multipart body does not contain its boundary")
    parts: dict[str, tuple[bytes, str | None]] = {}
    segments = body[start + len(delimiter):].split(b"\r\n" + delimiter)
    for i, segment in enumerate(segments):
        if segment.startswith(b"--"):
            return parts  # the close delimiter; what follows is the epilogue
        line_end = segment.find(b"\r\n")
        if line_end < 0 or segment[:line_end].strip(b" \t"):
            raise HttpError(400, "malformed multipart body (text after a boundary)")
        if i == len(segments) - 1 and not segment[line_end:].strip():
            break  # a boundary, then nothing
        head, sep, content = segment[line_end:].partition(b"\r\n\r\n")
        if not sep:
            raise HttpError(400, "malformed multipart body (part without a blank line after its headers)")
        headers = BytesHeaderParser().parsebytes(head.lstrip(b"\r\n") + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise HttpError(400, "multipart part without a Content-Disposition name")
        if name in parts:
            raise HttpError(400, f"multipart part {name!r} given twice")
        filename = headers.get_param("filename", header="content-disposition")
        parts[name] = (content, filename if isinstance(filename, str) else None)
    raise HttpError(400, "multipart body is truncated (no closing boundary)")


def _fields_from_multipart(body: bytes, content_type: str) -> tuple[bytes, dict[str, Any]]:
    parts = parse_multipart(body, content_type)
    unknown = sorted(set(parts) - {"image", *FIELDS})
    if unknown:
        raise HttpError(400, f"unknown multipart parts {unknown}; expected image, camera, prior, name")
    if "image" not in parts:
        raise HttpError(400, "multipart body has no 'image' part")
    try:
        text = {k: v.decode("utf-8") for k, (v, _) in parts.items() if k != "image"}
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"a multipart text part is not UTF-8 ({exc})") from exc
    fields: dict[str, Any] = {k: json_text(v, k) for k, v in text.items() if k != "name"}
    fields["name"] = text.get("name") or parts["image"][1]
    return parts["image"][0], fields


def _fields_from_json(body: bytes) -> tuple[bytes, dict[str, Any]]:
    doc = json_text(body, "body")
    if not isinstance(doc, dict):
        raise HttpError(400, "JSON body must be an object with image_base64")
    try:
        request = LocalizeJSON.model_validate(doc)
    except ValidationError as exc:
        raise HttpError(400, f"invalid JSON body: {_first_error(exc)}; expected image_base64 (base64), "
                        "optional camera, prior, name") from None
    image = base64.b64decode(re.sub(B64_SPACE, "", request.image_base64), validate=True)  # the pattern held
    return image, {"camera": request.camera, "prior": request.prior, "name": request.name}


def fields_from_body(kind: str, content_type: str, body: bytes, query: dict[str, list[str]]) -> tuple[bytes, dict]:
    """The image and its parsed ``camera`` / ``prior`` / ``name`` from a body of ``kind`` and the
    query string. A field may come from either; where both give it, the body's value is used."""
    fields: dict[str, Any] = {k: json_text(v[0], k) for k, v in query.items() if k != "name"}
    for key, value in fields.items():
        if value is None:  # the schema's query parameters are objects; null is not one
            raise HttpError(400, f"{key}=null: give a JSON object or leave the parameter out")
    if "name" in query:
        fields["name"] = query["name"][0]
    if kind == "multipart/form-data":
        image, given = _fields_from_multipart(body, content_type)
    elif kind == "application/json":
        image, given = _fields_from_json(body)
    else:
        image, given = body, {}
    fields.update({k: v for k, v in given.items() if v is not None})
    if fields.get("name") is not None and not isinstance(fields["name"], str):
        raise HttpError(400, "name must be a string")
    return image, {"camera": parse_camera(fields.get("camera")), "prior": parse_prior(fields.get("prior")),
                   "name": fields.get("name")}
