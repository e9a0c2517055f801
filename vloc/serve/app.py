"""The localization service: a FastAPI application over one or more warm localizers.

``GET /health``, ``GET /map`` (the default map), ``GET /maps``, ``POST /localize`` (the default
map), ``POST /maps/{name}/localize``, with rigs (``vloc serve --rig``) ``POST /localize_rig`` and
``POST /maps/{name}/localize_rig``, ``GET /metrics`` (Prometheus text) and ``GET
/openapi.json`` (generated from :mod:`vloc.serve.schema`). The body of a localization is a raw
image (camera, prior and name in the query string), ``multipart/form-data`` or JSON with
``image_base64`` (:mod:`vloc.serve.bodies`). A query that fails to localize is a 200 with
``"status": "failed"``; a malformed request is a 4xx with ``{"error": ...}`` (a body that is not a
decodable image a 422 with the decoder's message); an overloaded map a
503 with ``Retry-After``; a request past its deadline a 504 naming the stage it was in.

Each map has one worker thread (a localizer serialises its calls) and a bounded number of
localizations waiting or running (``ServeConf.queue``). Bodies are read chunk by chunk against the
size limit and a deadline, so neither a huge nor a slow upload holds memory or a worker.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from vloc import __version__
from vloc.io.images import ImageReadError
from vloc.io.poses import qt_from_rigid
from vloc.io.rigs import Rig
from vloc.localization.localizer import prepare_query
from vloc.localization.result import LocalizationResult
from vloc.localization.rig import RigLocalizationResult
from vloc.serve.bodies import FIELDS, HttpError, fields_from_body
from vloc.serve.metrics import ServiceMetrics, reason_label
from vloc.serve.rig import check_rigs, rig_openapi, rig_request
from vloc.serve.schema import CameraModel, ErrorBody, Health, LocalizeForm, LocalizeJSON, LocalizeResponse, MapInfo, \
    MapList, PriorModel

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("vloc.serve.access")  # one line per request (JSON with ServeConf.log_json)

DEFAULT_MAX_BYTES = 20 * 2**20
RAW_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
DRAIN_BYTES = 64 * 2**20  # oversize bodies up to this are read and dropped before the 413 (see Service._drained)


@dataclass(frozen=True, kw_only=True)
class ServeConf:
    """Limits of the service (``vloc serve`` options)."""

    max_bytes: int = DEFAULT_MAX_BYTES  # body size limit (413), checked while the body streams in
    queue: int = 8  # per map: localizations waiting or running; past it 503 with Retry-After
    timeout_s: float = 60.0  # request deadline from arrival to answer (504)
    body_timeout_s: float = 10.0  # the whole body must arrive within this (408): slow senders are cut off
    head_timeout_s: float = 10.0  # request line and headers must arrive within this (408; vloc.serve.protocol)
    max_connections: int = 1000  # open connections; past it the slowest waiting for its head is closed
    log_json: bool = False  # one JSON object per request log line

    def __post_init__(self) -> None:
        for name in ("max_bytes", "queue", "timeout_s", "body_timeout_s", "head_timeout_s", "max_connections"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServeConf.{name} must be positive, got {getattr(self, name)}")


@dataclass
class ServedMap:
    """One map of the service: its localizer, worker and admission count."""

    name: str
    localizer: Any  # vloc.localization.localizer.Localizer
    limit: int
    in_flight: int = 0
    worker: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vloc-{self.name}")

    def info(self) -> dict:
        m = self.localizer.manifest
        return dict(name=self.name, summary=m.summary, counts=dataclasses.asdict(m.counts),
                    preset=self.localizer.preset.name, vloc_version=m.vloc_version, created=m.created,
                    indexed_images=self.localizer.num_images, queue_limit=self.limit)


def result_json(result: LocalizationResult, map_name: str) -> dict:
    """``result.to_dict()`` plus ``cam_from_world`` ``{"qvec": wxyz, "tvec"}``, ``covariance`` (or nulls), ``map``."""
    out = result.to_dict()
    out["cam_from_world"] = out["covariance"] = None
    out["map"] = map_name
    if result.success and result.cam_from_world is not None:
        q, t = qt_from_rigid(result.cam_from_world)
        out["cam_from_world"] = {"qvec": q.tolist(), "tvec": t.tolist()}
        cov = result.covariance
        if cov is not None and np.all(np.isfinite(cov)):
            out["covariance"] = np.asarray(cov, float).tolist()
    return out


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class Service:
    """The application's state: maps, limits, metrics. :meth:`app` builds the FastAPI app."""

    def __init__(self, maps: dict[str, Any], conf: ServeConf = ServeConf(), rigs: dict[str, Rig] | None = None):
        if not maps:
            raise ValueError("the service needs at least one map")
        self.conf = conf
        self.rigs = check_rigs(rigs or {})  # POST /localize_rig when there are any (vloc serve --rig)
        self.maps = {name: ServedMap(name, loc, conf.queue) for name, loc in maps.items()}
        self.default = next(iter(self.maps))
        self.metrics = ServiceMetrics()

    def close(self) -> None:
        for m in self.maps.values():
            m.worker.shutdown(wait=True)

    # --- a localization ------------------------------------------------------------------------
    def _check_headers(self, request: Request) -> tuple[str, str, dict[str, list[str]]]:
        if request.headers.get("transfer-encoding"):
            raise HttpError(411, "chunked transfer encoding is not supported; send a Content-Length",
                            {"Connection": "close"})
        values = request.headers.getlist("content-length")
        if not values:
            raise HttpError(411, "Content-Length required")  # and no Transfer-Encoding: no body follows
        if len(values) > 1 or not values[0].strip().isdigit() or len(values[0].strip()) > 20:
            raise HttpError(400, f"invalid Content-Length {', '.join(values)!r}", {"Connection": "close"})
        n = int(values[0])
        if n > self.conf.max_bytes:
            raise HttpError(413, f"body of {n} bytes is over the limit of {self.conf.max_bytes} bytes",
                            {"Connection": "close"})
        if n == 0:
            raise HttpError(400, "empty body: send an image")
        content_type = request.headers.get("content-type", "")
        kind = content_type.split(";")[0].strip().lower()
        raw = kind.startswith("image/") or kind == "application/octet-stream"
        if not (raw or kind in ("multipart/form-data", "application/json")):
            raise HttpError(415, f"unsupported Content-Type {kind or '(none)'!r}; send image/jpeg, image/png, "
                            "application/octet-stream, multipart/form-data or application/json",
                            {"Connection": "close"})
        query = parse_qs(request.url.query, keep_blank_values=True)
        if set(query) - set(FIELDS) or any(len(v) > 1 for v in query.values()):
            raise HttpError(400, f"query parameters are {', '.join(FIELDS)}, each at most once", {"Connection": "close"})
        return ("raw" if raw else kind), content_type, query

    async def _read_body(self, request: Request, length: int, deadline: float) -> bytes:
        """The body, chunk by chunk: over ``max_bytes`` is a 413, not complete by ``deadline`` a 408."""
        chunks, size = [], 0
        request.state.body_read = True  # started: a refusal from here on does not drain it

        async def read() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.conf.max_bytes:
                    raise HttpError(413, f"body is over the limit of {self.conf.max_bytes} bytes",
                                    {"Connection": "close"})
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            raise HttpError(408, f"the body did not arrive within {self.conf.body_timeout_s:g} s "
                            f"({size} of {length} bytes)", {"Connection": "close"}) from None
        body = b"".join(chunks)
        if len(body) < length:
            raise HttpError(400, f"body ended after {len(body)} of {length} bytes", {"Connection": "close"})
        return body

    async def _request(self, request: Request, only: tuple[str, str] | None = None,
                       ) -> tuple[float, str, str, dict[str, list[str]], bytes]:
        """Arrival time, body kind, Content-Type, query string and the body, read within the limits;
        ``only``: (the one body kind the route takes, the 415's message for another)."""
        arrived = time.monotonic()
        kind, content_type, query = self._check_headers(request)
        if only is not None and kind != only[0]:
            raise HttpError(415, only[1], {"Connection": "close"})
        length = int(request.headers["content-length"])
        return arrived, kind, content_type, query, await self._read_body(request, length,
                                                                         arrived + self.conf.body_timeout_s)

    async def localize(self, request: Request, served: ServedMap) -> dict:
        arrived, kind, content_type, query, body = await self._request(request)
        image, fields = fields_from_body(kind, content_type, body, query)
        if not image:
            raise HttpError(400, "the image is empty")
        name = fields["name"] or "query"

        def work() -> LocalizationResult:
            try:
                query = prepare_query(image, fields["camera"], name)
            except ImageReadError as exc:  # not an image: the client's error, answered 422
                raise HttpError(422, str(exc)) from None
            except ValueError as exc:  # an image whose camera does not fit it: a failed localization
                return LocalizationResult(name, False, str(exc))
            return served.localizer.localize(query, None, fields["prior"], name)

        result = await self._in_worker(served, arrived, work)
        for stage, seconds in result.timings.items():
            self.metrics.stage_seconds.labels(served.name, stage).observe(seconds)
        self.metrics.localizations.labels(served.name, "localized" if result.success else "failed",
                                          "" if result.success else reason_label(result.reason)).inc()
        request.state.result = result
        return result_json(result, served.name)

    async def _in_worker(self, served: ServedMap, arrived: float, work: Callable[[], Any]) -> Any:
        """``work()`` on the map's worker within the request deadline: 503 when the map's queue is
        full, 504 past the deadline; an HttpError raised by ``work`` is the answer."""
        if served.in_flight >= served.limit:
            raise HttpError(503, f"map {served.name!r} is busy: {served.in_flight} localizations waiting or running "
                            f"(limit {served.limit}); retry later", {"Retry-After": "1"})
        served.in_flight += 1
        self.metrics.queue_depth.labels(served.name).set(served.in_flight)
        started: list[float] = []

        def timed() -> Any:
            started.append(time.monotonic())
            try:
                return work()
            except HttpError as exc:
                return exc

        future = asyncio.get_running_loop().run_in_executor(served.worker, timed)
        future.add_done_callback(lambda _: self._release(served))
        try:
            result = await asyncio.wait_for(asyncio.shield(future), max(arrived + self.conf.timeout_s - time.monotonic(),
                                                                        0.001))
        except asyncio.TimeoutError:
            stage = "localizing" if started else "queued"
            raise HttpError(504, f"no answer within the {self.conf.timeout_s:g} s deadline (it was {stage})",
                            stage=stage) from None
        self.metrics.stage_seconds.labels(served.name, "queue").observe(started[0] - arrived)
        if isinstance(result, HttpError):
            raise result
        return result

    async def localize_rig(self, request: Request, served: ServedMap) -> dict:
        """``POST .../localize_rig``: one multipart part per camera of the rig (:mod:`vloc.serve.rig`)."""
        arrived, _, content_type, _, body = await self._request(request, only=(
            "multipart/form-data", "a rig localization is multipart/form-data: one image part per camera"))
        rig, images, cameras, name = rig_request(body, content_type, self.rigs)

        def work() -> RigLocalizationResult:
            try:
                return served.localizer.localize_rig(images, rig, cameras, name)
            except ImageReadError as exc:
                raise HttpError(422, str(exc)) from None
            except ValueError as exc:  # intrinsics that do not fit, or none to be had: a failed localization
                return RigLocalizationResult(name, False, str(exc))

        result = await self._in_worker(served, arrived, work)
        self.metrics.localizations.labels(served.name, "localized" if result.success else "failed",
                                          "" if result.success else reason_label(result.reason)).inc()
        return dict(result.to_dict(), map=served.name, rig=rig.name)

    async def answer(self, request: Request, map_name: str, rig: bool = False) -> Any:
        """The response to a localization request: the result, or the error as JSON (a bug is a 500,
        logged with its traceback)."""
        try:
            if map_name not in self.maps:
                raise HttpError(404, f"no map {map_name!r}; maps: {', '.join(self.maps)}")
            if rig:
                return await self.localize_rig(request, self.maps[map_name])
            return await self.localize(request, self.maps[map_name])
        except HttpError as exc:
            if exc.headers.get("Connection") == "close" and await self._drained(request):
                exc.headers.pop("Connection", None)  # the body was read (and dropped): the connection goes on
            return _error(exc.status, exc.message, exc.headers, **exc.extra)
        except Exception:  # a bug, or the localizer failing: answered, never a dropped connection
            logger.exception("%s %s failed", request.method, request.url.path)
            return _error(500, "internal server error (see the server log)", {"Connection": "close"})

    async def _drained(self, request: Request) -> bool:
        """Read and drop the unread body of a refused request (at most ``DRAIN_BYTES``, within the
        body deadline), so that the client, maybe still sending it, reads the answer instead of a
        reset connection. Larger bodies are not waited for: the answer closes the connection."""
        length = request.headers.get("content-length", "")
        if (not length.isdigit() or int(length) > DRAIN_BYTES or request.headers.get("expect")
                or getattr(request.state, "body_read", False)):
            return False

        async def drain() -> None:
            async for _ in request.stream():
                pass

        try:
            await asyncio.wait_for(drain(), self.conf.body_timeout_s)
            return True
        except (asyncio.TimeoutError, OSError, RuntimeError):
            return False

    def _release(self, served: ServedMap) -> None:
        served.in_flight -= 1  # runs on the event loop (a done callback of an asyncio future)
        self.metrics.queue_depth.labels(served.name).set(served.in_flight)

    # --- the application ---------------------------------------------------------------------
    def app(self) -> FastAPI:
        app = FastAPI(title="vloc localization service", version=__version__,
                      description="Localize images against prebuilt vloc maps.")
        responses = {str(c): {"model": ErrorBody, "description": d} for c, d in (
            (400, "malformed request"), (404, "no map of that name"), (408, "the body arrived too slowly"),
            (411, "Content-Length required"), (413, "body too large"), (415, "unsupported Content-Type"),
            (422, "the image cannot be decoded (the decoder's message)"), (500, "internal error"),
            (503, "the map is busy: retry after Retry-After seconds"), (504, "deadline passed"))}
        extra = _localize_openapi()

        def get_and_head(path: str, **kwargs: Any):
            """A GET route that also answers HEAD (headers only; HEAD kept out of the schema)."""
            def register(fn):
                app.add_api_route(path, fn, methods=["HEAD"], include_in_schema=False, **kwargs)
                return app.get(path, **kwargs)(fn)
            return register

        @get_and_head("/health", response_model=Health, summary="Liveness")
        async def health() -> dict:
            return {"status": "ok"}

        @get_and_head("/map", response_model=MapInfo, summary="The default map")
        async def default_map() -> dict:
            return self.maps[self.default].info()

        @get_and_head("/maps", response_model=MapList, summary="Every served map")
        async def all_maps() -> dict:
            return {"maps": [m.info() for m in self.maps.values()], "default": self.default}

        @app.post("/localize", response_model=LocalizeResponse, responses=responses, openapi_extra=extra,
                  summary="Localize one image against the default map")
        async def localize_default(request: Request) -> Any:
            return await self.answer(request, self.default)

        @app.post("/maps/{name}/localize", response_model=LocalizeResponse, responses=responses,
                  openapi_extra=extra, summary="Localize one image against the map NAME")
        async def localize_named(name: str, request: Request) -> Any:
            return await self.answer(request, name)

        if self.rigs:
            rig_extra = rig_openapi(self.rigs)

            @app.post("/localize_rig", responses=responses, openapi_extra=rig_extra,
                      summary="Localize the images of one rig capture together against the default map")
            async def localize_rig_default(request: Request) -> Any:
                return await self.answer(request, self.default, rig=True)

            @app.post("/maps/{name}/localize_rig", responses=responses, openapi_extra=rig_extra,
                      summary="Localize the images of one rig capture together against the map NAME")
            async def localize_rig_named(name: str, request: Request) -> Any:
                return await self.answer(request, name, rig=True)

        @get_and_head("/metrics", summary="Prometheus metrics", response_class=Response,
                 responses={"200": {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
        async def metrics() -> Response:
            return Response(self.metrics.render(), media_type=self.metrics.content_type)

        @app.exception_handler(StarletteHTTPException)
        async def starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
            message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
            if exc.status_code == 404:
                message = f"no such endpoint {request.url.path!r}; see /openapi.json"
            headers = dict(exc.headers or {})
            if exc.status_code == 405:
                headers["Allow"] = ", ".join(_allowed_methods(app, request.url.path))
                message = f"{request.method} not allowed on {request.url.path}; use {headers['Allow']}"
            return _error(exc.status_code, message, headers)

        @app.exception_handler(RequestValidationError)
        async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
            return _error(400, f"invalid request: {exc.errors()[0].get('msg', exc)}")

        @app.middleware("http")
        async def request_log(request: Request, call_next):
            rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
            t = time.perf_counter()
            response = await call_next(request)
            seconds = time.perf_counter() - t
            response.headers["X-Request-ID"] = rid
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(path, str(response.status_code)).inc()
            self.metrics.request_seconds.labels(path).observe(seconds)
            self._log(rid, request, response.status_code, seconds, getattr(request.state, "result", None))
            return response

        def openapi() -> dict:
            if app.openapi_schema is None:
                spec = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
                for model in (LocalizeJSON, LocalizeForm, CameraModel, PriorModel):
                    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                    for name, sub in schema.pop("$defs", {}).items():
                        spec["components"]["schemas"].setdefault(name, sub)
                    spec["components"]["schemas"].setdefault(model.__name__, schema)
                for path in ("/maps/{name}/localize", "/maps/{name}/localize_rig"):
                    for parameter in spec["paths"].get(path, {}).get("post", {}).get("parameters", []):
                        if parameter["name"] == "name" and parameter["in"] == "path":
                            parameter["schema"]["enum"] = list(self.maps)
                app.openapi_schema = spec
            return app.openapi_schema

        app.openapi = openapi  # type: ignore[method-assign]
        return app

    def _log(self, rid: str, request: Request, status: int, seconds: float, result: LocalizationResult | None) -> None:
        record = {"request_id": rid, "method": request.method, "path": request.url.path, "status": status,
                  "seconds": round(seconds, 4), "client": request.client.host if request.client else None}
        if result is not None:
            record.update(query=result.name, result="localized" if result.success else "failed",
                          reason=result.reason, inliers=result.num_inliers)
        if self.conf.log_json:
            access_logger.info("%s", json.dumps(record))
        else:
            access_logger.info("%s", " ".join(f"{k}={v}" for k, v in record.items() if v not in (None, "")))


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route answers on ``path`` (the ``Allow`` header of a 405)."""
    methods: set[str] = set()
    for route in app.routes:
        if isinstance(route, BaseRoute) and getattr(route, "methods", None) and route.path_regex.match(path):
            methods |= set(route.methods)
    return sorted(methods)


def _localize_openapi() -> dict:
    """The request side of the localize operations (their bodies are parsed by content type, so
    FastAPI cannot infer them): references to the pydantic models' schemas."""
    ref = {"$ref": "#/components/schemas/{}"}
    json_param = [{"name": k, "in": "query", "required": False,
                   "description": "for raw image bodies; with a JSON or multipart body, the body's value wins",
                   "content": {"application/json": {"schema": {"$ref": ref["$ref"].format(m)}}}}
                  for k, m in (("camera", "CameraModel"), ("prior", "PriorModel"))]
    binary = {"type": "string", "format": "binary", "minLength": 1}
    return {"parameters": json_param + [{"name": "name", "in": "query", "required": False, "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {
                **{t: {"schema": binary} for t in RAW_TYPES},
                "multipart/form-data": {"schema": {"$ref": ref["$ref"].format("LocalizeForm")}},
                "application/json": {"schema": {"$ref": ref["$ref"].format("LocalizeJSON")}}}}}
