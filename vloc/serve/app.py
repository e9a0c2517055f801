"""HTTP API over one warm :class:`~vloc.localization.localizer.Localizer` (standard library only).

``GET /health``, ``GET /map``, ``GET /openapi.json`` and ``POST /localize``; the body of
``/localize`` is a raw image (camera, prior and name in the query string), ``multipart/form-data``
(part ``image`` plus text parts ``camera``, ``prior``, ``name``) or JSON with ``image_base64``.
A query that fails to localize is a 200 with ``"status": "failed"``; a malformed request is a 4xx
with ``{"error": ...}``. Every response is JSON with a Content-Length.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
import re
import signal
import socket
import sys
import threading
import time
from email.message import Message
from email.parser import BytesHeaderParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pycolmap
from PIL import Image

from vloc import __version__
from vloc.io.cameras import camera_from_dict
from vloc.io.poses import qt_from_rigid, rigid_from_qt
from vloc.localization.localizer import LocalizationResult, Localizer, Prior

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 2**20
FIELDS = ("camera", "prior", "name")  # besides the image, in the query string, form parts or JSON keys
_LINGER_S = 2.0  # after closing our side, how long to drain what a client still sends
_CLOSE_WAIT_S = 30.0  # how long server_close waits for requests in flight
_ROUTES = {"/health": ("GET", "HEAD"), "/map": ("GET", "HEAD"), "/openapi.json": ("GET", "HEAD"),
           "/localize": ("POST",)}
_PRIOR_SHAPE = 'prior must be a JSON object {"qvec": [w, x, y, z], "tvec": [x, y, z], "radius": r > 0}'
_CAMERA_KEYS = {"model", "width", "height", "params"}


class HttpError(Exception):
    """A request we answer with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _is_number(x: Any) -> bool:
    if isinstance(x, int) and not isinstance(x, bool):
        return abs(x) < 2**53  # a huge JSON integer would overflow a float
    return isinstance(x, float) and math.isfinite(x)


def _numbers(x: Any, n: int) -> bool:
    return isinstance(x, list) and len(x) == n and all(_is_number(v) for v in x)


def parse_camera(value: Any) -> pycolmap.Camera | None:
    """``None`` or ``{"model", "width", "height", "params"}`` -> a camera; HttpError 400 otherwise."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != _CAMERA_KEYS:
        raise HttpError(400, 'camera must be a JSON object {"model", "width", "height", "params"}')
    w, h, params = value["width"], value["height"], value["params"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**31 for v in (w, h)):
        raise HttpError(400, "camera width and height must be positive integers")
    if not isinstance(value["model"], str) or not (isinstance(params, list) and all(map(_is_number, params))):
        raise HttpError(400, "camera model must be a string and params a list of finite numbers")
    try:
        return camera_from_dict(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise HttpError(400, str(exc)) from exc


def parse_prior(value: Any) -> Prior | None:
    """``None`` or ``{"qvec": [w, x, y, z], "tvec": [x, y, z], "radius": r}`` -> a Prior; HttpError 400 otherwise."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"qvec", "tvec", "radius"}:
        raise HttpError(400, _PRIOR_SHAPE)
    q, t, r = value["qvec"], value["tvec"], value["radius"]
    if not (_numbers(q, 4) and _numbers(t, 3) and _is_number(r) and r > 0) or np.linalg.norm(q) < 1e-12:
        raise HttpError(400, _PRIOR_SHAPE + " with finite numbers and a non-zero qvec")
    return Prior(rigid_from_qt(np.array(q, float), np.array(t, float)), float(r))


def _json_text(text: str | bytes, what: str) -> Any:
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
    fields: dict[str, Any] = {k: _json_text(v, k) for k, v in text.items() if k != "name"}
    fields["name"] = text.get("name") or parts["image"][1]
    return parts["image"][0], fields


def _fields_from_json(body: bytes) -> tuple[bytes, dict[str, Any]]:
    doc = _json_text(body, "body")
    if not isinstance(doc, dict):
        raise HttpError(400, "JSON body must be an object with image_base64")
    unknown = sorted(set(doc) - {"image_base64", *FIELDS})
    if unknown:
        raise HttpError(400, f"unknown JSON keys {unknown}; expected image_base64, camera, prior, name")
    encoded = doc.get("image_base64")
    if not isinstance(encoded, str) or not encoded:
        raise HttpError(400, "JSON body needs a non-empty string image_base64")
    try:
        image = base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HttpError(400, f"image_base64 is not valid base64 ({exc})") from exc
    return image, {k: doc.get(k) for k in FIELDS}


def result_json(result: LocalizationResult) -> dict:
    """``result.to_dict()`` plus ``cam_from_world`` ``{"qvec": wxyz, "tvec"}`` and ``covariance`` (or nulls)."""
    out = result.to_dict()
    out["cam_from_world"] = out["covariance"] = None
    if result.success and result.cam_from_world is not None:
        q, t = qt_from_rigid(result.cam_from_world)
        out["cam_from_world"] = {"qvec": q.tolist(), "tvec": t.tolist()}
        cov = result.covariance
        if cov is not None and np.all(np.isfinite(cov)):
            out["covariance"] = np.asarray(cov, float).tolist()
    return out


def map_info(localizer: Localizer) -> dict:
    """The body of ``GET /map``."""
    m = localizer.manifest
    return dict(summary=m.summary, counts=dataclasses.asdict(m.counts), preset=localizer.preset.name,
                vloc_version=m.vloc_version, created=m.created, indexed_images=localizer.num_images)


def openapi_spec() -> dict:
    """The OpenAPI 3.0 document served at ``GET /openapi.json``."""
    def body(schema: dict) -> dict:
        return {"application/json": {"schema": schema}}

    def ok(description: str, schema: dict) -> dict:
        return {"200": {"description": description, "content": body(schema)}}

    error = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    numbers = {"type": "array", "items": {"type": "number"}}
    camera = {"type": "object", "required": sorted(_CAMERA_KEYS), "description": "COLMAP camera; its size must "
              "match the image. Omitted: EXIF focal length, else estimated.", "properties": {
                  "model": {"type": "string", "example": "PINHOLE"}, "width": {"type": "integer"},
                  "height": {"type": "integer"}, "params": numbers}}
    prior = {"type": "object", "required": ["qvec", "tvec", "radius"], "description": "a believed cam_from_world "
             "pose: retrieval looks at map images within radius (map units) of its centre first", "properties": {
                 "qvec": {**numbers, "minItems": 4, "maxItems": 4, "description": "w, x, y, z"},
                 "tvec": {**numbers, "minItems": 3, "maxItems": 3}, "radius": {"type": "number", "minimum": 0}}}
    result = {"type": "object", "properties": {
        "name": {"type": "string"}, "status": {"type": "string", "enum": ["localized", "failed"]},
        "reason": {"type": "string"}, "intrinsics": {"type": "string", "enum": ["given", "exif", "estimated", ""]},
        **{k: {"type": "integer"} for k in ("num_keypoints", "num_matches", "num_inliers")},
        "inlier_ratio": {"type": "number"}, "retrieved": {"type": "array", "items": {"type": "string"}},
        "retrieved_scores": {**numbers, "description": "global similarity of each retrieved image"},
        "retrieval": {"type": "string"}, "timings": {"type": "object", "additionalProperties": {"type": "number"}},
        "layer": {"type": "string", "description": "the preset whose features gave the result: the map's own or "
                  "its fallback layer's"},
        "camera": camera, "covariance": {"type": "array", "items": numbers, "nullable": True},
        "cam_from_world": {"type": "object", "nullable": True, "properties": {"qvec": numbers, "tvec": numbers}}}}
    binary = {"type": "string", "format": "binary"}
    json_part = {"type": "string", "description": "JSON, as in the application/json body"}
    errors = {str(c): {"description": HTTPStatus(c).phrase, "content": body(error)} for c in (400, 411, 413, 415, 500)}
    localize = {"summary": "Localize one image against the map", "description": "A query that cannot be localized "
                "(including an undecodable image) is a 200 with status failed and a reason.",
                "parameters": [{"name": k, "in": "query", "required": False, "description": "raw image bodies only",
                                "content": body(s)} for k, s in (("camera", camera), ("prior", prior))]
                + [{"name": "name", "in": "query", "required": False, "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {
                    **{t: {"schema": binary} for t in ("image/jpeg", "image/png", "application/octet-stream")},
                    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                        "image": binary, "camera": json_part, "prior": json_part, "name": {"type": "string"}}}},
                    "application/json": {"schema": {"type": "object", "required": ["image_base64"], "properties": {
                        "image_base64": {"type": "string", "format": "byte"}, "name": {"type": "string"},
                        "camera": {**camera, "nullable": True}, "prior": {**prior, "nullable": True}}}}}},
                "responses": {**ok("the localization result", result), **errors}}
    info = {"type": "object", "properties": {k: {"type": t} for k, t in (
        ("summary", "string"), ("counts", "object"), ("preset", "string"), ("vloc_version", "string"),
        ("created", "string"), ("indexed_images", "integer"))}}
    return {"openapi": "3.0.3", "info": {"title": "vloc localization service", "version": __version__},
            "paths": {"/health": {"get": {"summary": "Liveness", "responses": ok("alive", {
                          "type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}})}},
                      "/map": {"get": {"summary": "The served map", "responses": ok("map summary", info)}},
                      "/openapi.json": {"get": {"summary": "This document", "responses": ok("OpenAPI 3.0",
                                                                                           {"type": "object"})}},
                      "/localize": {"post": localize}}}


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


class LocalizationServer(ThreadingHTTPServer):
    """A threading HTTP server holding the shared localizer and the body size limit.

    :meth:`server_close` also ends idle keep-alive connections and waits (boundedly) for requests
    in flight, so no handler thread is left running when the process exits."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], localizer: Localizer, max_bytes: int):
        self.localizer, self.max_bytes = localizer, max_bytes
        self._connections: set[socket.socket] = set()
        self._changed = threading.Condition()
        super().__init__(address, Handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        with self._changed:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        """Half-close, then drain (without keeping) what the client still sends, for a bounded time: a
        close with unread bytes (a rejected body) would reset the connection and could destroy the
        response before the client reads it."""
        try:
            request.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_S
            while (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                if not request.recv(1 << 16):
                    break
        except OSError:
            pass
        self.close_request(request)
        with self._changed:
            self._connections.discard(request)
            self._changed.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Through the module logger instead of socketserver's traceback on stderr; a client that
        resets or times out its connection is routine."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            logger.debug("connection from %s ended: %r", client_address, exc)
        else:
            logger.exception("unexpected error serving %s", client_address)

    def server_close(self) -> None:
        """Stop listening; end every connection's reading side (idle ones close at once, requests in
        flight still send their response) and wait up to ``_CLOSE_WAIT_S`` for them to finish."""
        super().server_close()
        with self._changed:
            for sock in self._connections:
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            if not self._changed.wait_for(lambda: not self._connections, _CLOSE_WAIT_S):
                logger.warning("%d connections still open after %.0f s", len(self._connections), _CLOSE_WAIT_S)


class Handler(BaseHTTPRequestHandler):
    """Routes requests; every response is JSON. Unread request bodies close the connection."""

    server: LocalizationServer
    protocol_version = "HTTP/1.1"
    server_version = f"vloc/{__version__}"
    sys_version = ""
    timeout = 60  # seconds of silence before an idle (keep-alive) connection is dropped
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    _unread_body = False

    def __getattr__(self, name: str) -> Callable[[], None]:
        # http.server answers methods without a do_* attribute with 501; every method is routed instead
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:  # "format": the base class's parameter name
        logger.debug("%s " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, oversized headers ...) as JSON; then close."""
        self.close_connection = True
        self._send_json(code, {"error": message or HTTPStatus(code).phrase})

    def handle_expect_100(self) -> bool:
        """Refuse ``Expect: 100-continue`` uploads that will be refused anyway, before they are sent."""
        if self.command == "POST" and urlsplit(self.path).path == "/localize":
            try:
                self._body_length()
            except HttpError as exc:
                self._unread_body = True
                self._send_json(exc.status, {"error": exc.message})
                return False
        return super().handle_expect_100()

    def _handle(self) -> None:
        length = self.headers.get("Content-Length", "0").strip()
        self._unread_body = bool(self.headers.get("Transfer-Encoding")) or length != "0"
        headers: dict[str, str] = {}
        try:
            path = urlsplit(self.path).path
            if path not in _ROUTES:
                raise HttpError(404, f"no such endpoint {path!r}; see /openapi.json")
            if self.command not in _ROUTES[path]:
                headers["Allow"] = ", ".join(_ROUTES[path])
                raise HttpError(405, f"{self.command} not allowed on {path}; use {headers['Allow']}")
            status, payload = 200, self._route(path)
        except HttpError as exc:
            status, payload = exc.status, {"error": exc.message}
        except (TimeoutError, ConnectionError):  # the client stalled or left mid-request: nobody to answer
            self.close_connection = True
            raise
        except Exception:  # a bug, or the localizer failing: never let the connection die silently
            logger.exception("%s %s failed", self.command, self.path)
            self.close_connection = True
            status, payload = 500, {"error": "internal server error (see the server log)"}
        self._send_json(status, payload, headers)

    def _route(self, path: str) -> dict:
        if path == "/health":
            return {"status": "ok"}
        if path == "/map":
            return map_info(self.server.localizer)
        if path == "/openapi.json":
            return openapi_spec()
        return self._localize()

    def _body_length(self) -> int:
        """The declared body length, checked against the limit before anything is read."""
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "chunked transfer encoding is not supported; send a Content-Length")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise HttpError(411, "Content-Length required")
        if len(values) > 1 or not re.fullmatch(r"[0-9]{1,20}", values[0].strip()):
            raise HttpError(400, f"invalid Content-Length {', '.join(values)!r}")
        n = int(values[0])
        if n > self.server.max_bytes:
            raise HttpError(413, f"body of {n} bytes is over the limit of {self.server.max_bytes} bytes")
        if n == 0:
            raise HttpError(400, "empty body: send an image")
        return n

    def _localize(self) -> dict:
        length = self._body_length()
        content_type = self.headers.get("Content-Type", "")
        kind = content_type.split(";")[0].strip().lower()
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        raw = kind.startswith("image/") or kind == "application/octet-stream"
        if not (raw or kind in ("multipart/form-data", "application/json")):
            raise HttpError(415, f"unsupported Content-Type {kind or '(none)'!r}; send image/jpeg, image/png, "
                            "application/octet-stream, multipart/form-data or application/json")
        if set(query) - set(FIELDS) or any(len(v) > 1 for v in query.values()):
            raise HttpError(400, f"query parameters are {', '.join(FIELDS)}, each at most once")
        if query and not raw:
            raise HttpError(400, "query parameters are only for raw image bodies; put them in the body")
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise HttpError(400, f"body ended after {len(body)} of {length} bytes")
        self._unread_body = False
        if raw:
            fields = {k: _json_text(v[0], k) for k, v in query.items() if k != "name"}
            image, fields["name"] = body, query.get("name", [None])[0]
        elif kind == "multipart/form-data":
            image, fields = _fields_from_multipart(body, content_type)
        else:
            image, fields = _fields_from_json(body)
        if not image:
            raise HttpError(400, "the image is empty")
        if fields.get("name") is not None and not isinstance(fields["name"], str):
            raise HttpError(400, "name must be a string")
        camera, prior = parse_camera(fields.get("camera")), parse_prior(fields.get("prior"))
        name = fields.get("name") or "query"
        try:
            result = self.server.localizer.localize(image, camera, prior, name)
        except Image.DecompressionBombError as exc:  # not an unexpected failure: a (hostile) huge image
            result = LocalizationResult(name, False, f"{name}: image too large to decode ({exc})")
        logger.debug("localize %s: %s %s", name, result.to_dict()["status"], result.reason)
        return result_json(result)

    def _send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, allow_nan=False, default=_json_default).encode()
        if self._unread_body:
            self.close_connection = True  # the body would be read as the next request
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def make_server(localizer: Localizer, host: str = "127.0.0.1", port: int = 8000,
                max_bytes: int = DEFAULT_MAX_BYTES) -> ThreadingHTTPServer:
    """A bound (not yet serving) server; ``port=0`` picks a free port (see ``server.server_address``).
    Call ``serve_forever()`` (e.g. in a thread), then ``shutdown()`` and ``server_close()``."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    return LocalizationServer((host, port), localizer, max_bytes)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(map_dir: Path | str, host: str = "127.0.0.1", port: int = 8000, preset: str | None = None,
          max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Load ``map_dir`` once and serve it until interrupted (Ctrl-C / SIGINT, or SIGTERM as sent
    by systemd and container runtimes): requests in flight finish, then the server closes."""
    localizer = Localizer.load(map_dir, preset)
    server = make_server(localizer, host, port, max_bytes)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        bound_host, bound_port = server.server_address[:2]
        logger.info("serving map %s (%s) at http://%s:%d (API: /openapi.json)", map_dir,
                    localizer.manifest.summary, bound_host, bound_port)
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("interrupted: shutting down")
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
