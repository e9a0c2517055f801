"""``POST /localize_rig``: the request of a rig localization (``vloc serve --rig FILE``).

The body is ``multipart/form-data`` with one part per camera of the rig, named by the camera
(the image, as ``/localize`` takes it), and optional text parts: ``rig`` (which rig, when the
file has several), ``cameras`` (JSON ``{camera: {"model", "width", "height", "params"}}``, each
validated as ``/localize``'s camera) and ``name``. A missing camera, a part of no camera of the
rig and a malformed field are 400s naming it; an image that does not decode is a 422 (raised by
the localizer's decoding).
"""
from __future__ import annotations

from typing import Any

import pycolmap

from vloc.io.rigs import Rig
from vloc.serve.bodies import HttpError, json_text, parse_camera, parse_multipart

RESERVED = ("rig", "cameras", "name")  # text parts; no camera may be named so


def check_rigs(rigs: dict[str, Rig]) -> dict[str, Rig]:
    for rig in rigs.values():
        clash = [c for c in rig.sensors if c in RESERVED]
        if clash:
            raise ValueError(f"rig {rig.name!r}: cameras may not be named {', '.join(RESERVED)} (form fields of "
                             f"/localize_rig): {clash}")
    return rigs


def rig_request(body: bytes, content_type: str,
                rigs: dict[str, Rig]) -> tuple[Rig, dict[str, bytes], dict[str, pycolmap.Camera], str]:
    """The rig, camera name -> image bytes, camera name -> intrinsics, and the capture's name."""
    parts = parse_multipart(body, content_type)
    try:
        text = {k: parts[k][0].decode("utf-8") for k in RESERVED if k in parts}
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"a multipart text part is not UTF-8 ({exc})") from exc
    if "rig" in text:
        if text["rig"] not in rigs:
            raise HttpError(400, f"no rig {text['rig']!r}; rigs: {', '.join(rigs)}")
        rig = rigs[text["rig"]]
    elif len(rigs) == 1:
        rig = next(iter(rigs.values()))
    else:
        raise HttpError(400, f"say which rig in a 'rig' part: {', '.join(rigs)}")
    unknown = sorted(set(parts) - set(rig.sensors) - set(RESERVED))
    if unknown:
        raise HttpError(400, f"parts {unknown} are no camera of rig {rig.name!r}; its cameras: {list(rig.sensors)}")
    missing = [c for c in rig.sensors if c not in parts]
    if missing:
        raise HttpError(400, f"no image part for camera(s) {missing} of rig {rig.name!r}")
    empty = [c for c in rig.sensors if not parts[c][0]]
    if empty:
        raise HttpError(400, f"the image of camera(s) {empty} is empty")
    given: Any = json_text(text["cameras"], "cameras") if "cameras" in text else {}
    if not isinstance(given, dict) or any(c not in rig.sensors for c in given):
        raise HttpError(400, f"cameras must be a JSON object of the rig's cameras {list(rig.sensors)} -> "
                        '{"model", "width", "height", "params"}')
    cameras = {c: parse_camera(value) for c, value in given.items() if value is not None}
    return rig, {c: parts[c][0] for c in rig.sensors}, cameras, text.get("name") or rig.name


def rig_openapi(rigs: dict[str, Rig]) -> dict:
    """The request side of the rig routes: a multipart form with a binary part per camera."""
    cameras = sorted({c for rig in rigs.values() for c in rig.sensors})
    binary = {"type": "string", "format": "binary", "minLength": 1}
    properties = {c: binary for c in cameras}
    properties.update(rig={"type": "string", "enum": list(rigs)},
                      cameras={"type": "string", "description": "JSON: camera name -> {model, width, height, params}"},
                      name={"type": "string"})
    required = cameras if len(rigs) == 1 else ["rig"]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties, "required": required, "additionalProperties": False}}}}}
