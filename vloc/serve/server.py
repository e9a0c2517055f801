"""Running the service with uvicorn: ``vloc serve`` (:func:`serve`) and a server in a thread for
tests and scripts (:func:`make_server`).

SIGTERM (systemd, container runtimes) and Ctrl-C stop accepting connections, let requests in
flight and queued finish (up to the request deadline), then the process exits 0.
"""
from __future__ import annotations

import logging
import signal
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import uvicorn

from vloc.serve.app import DEFAULT_MAX_BYTES, ServeConf, Service
from vloc.serve.protocol import guarded_protocol

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server, with SIGTERM / SIGINT starting a graceful exit and not re-raised after it
    (uvicorn re-raises them, which would make the process's exit status 143 / 130)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._graceful) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _graceful(self, signum: int, frame) -> None:
        logger.info("%s: finishing the requests in flight, then exiting", signal.Signals(signum).name)
        self.should_exit = True


def _config(service: Service, sock: socket.socket) -> uvicorn.Config:
    conf = service.conf
    return uvicorn.Config(service.app(), log_config=None, access_log=False, lifespan="off",
                          http=guarded_protocol(conf.head_timeout_s, conf.max_connections),
                          timeout_keep_alive=60, timeout_graceful_shutdown=int(conf.timeout_s) + 5,
                          limit_concurrency=None, h11_max_incomplete_event_size=64 * 1024,
                          fd=None, host=sock.getsockname()[0], port=sock.getsockname()[1])


def _bind(host: str, port: int) -> socket.socket:
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and without it
    # Nagle's algorithm held each keep-alive response's body for the client's delayed ACK (~40 ms).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class ThreadedServer:
    """The service on a bound socket, served by :meth:`serve_forever` (e.g. in a thread) until
    :meth:`shutdown`; ``server_address`` is ``(host, port)`` (``port=0``: a free one)."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0):
        self.service = service
        self.socket = _bind(host, port)
        self.server_address = self.socket.getsockname()[:2]
        self._server = _Server(_config(service, self.socket))
        self._done = threading.Event()

    def serve_forever(self) -> None:
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._done.set()

    def shutdown(self) -> None:
        self._server.should_exit = True
        self._done.wait(60)

    def server_close(self) -> None:
        self.socket.close()
        self.service.close()


def make_server(localizer, host: str = "127.0.0.1", port: int = 0, max_bytes: int = DEFAULT_MAX_BYTES,
                rigs: dict | None = None, **conf) -> ThreadedServer:
    """One localizer served as the map "default" (more maps: build a :class:`Service`)."""
    return ThreadedServer(Service({"default": localizer}, ServeConf(max_bytes=max_bytes, **conf), rigs), host, port)


def load_maps(maps: list[str], preset: str | None = None, device: str | None = None) -> dict:
    """``["NAME=DIR", ...]`` or ``["DIR"]`` -> ``{name: Localizer}``, one model cache for all,
    on ``device`` (:func:`vloc.device.resolve_device`)."""
    from vloc.localization.localizer import Localizer
    from vloc.localization.models import ModelCache

    models, out = ModelCache(device), {}
    for spec in maps:
        name, sep, directory = spec.partition("=")
        if not sep:
            name, directory = Path(spec).name or "default", spec
        if not name or name in out:
            raise ValueError(f"--map {spec!r}: map names must be non-empty and distinct")
        out[name] = Localizer.load(directory, preset, models)
    logger.info("loaded %d maps with %d shared models on %s", len(out), len(models), models.device)
    return out


def serve(maps: list[str] | str | Path, host: str = "127.0.0.1", port: int = 8000, preset: str | None = None,
          conf: ServeConf = ServeConf(), rigs: dict | None = None, device: str | None = None) -> None:
    """Load the maps once and serve them until SIGTERM / Ctrl-C; then finish what is in flight.
    ``rigs``: name -> :class:`vloc.io.rigs.Rig` for ``POST /localize_rig``; ``device``: where the
    models run (default ``auto``)."""
    maps = [str(maps)] if isinstance(maps, (str, Path)) else maps
    run_service(Service(load_maps(maps, preset, device), conf, rigs), host, port)


def run_service(service: Service, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``service`` in this (main) thread until SIGTERM / Ctrl-C."""
    sock = _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    for m in service.maps.values():
        logger.info("map %s: %s (%s)", m.name, m.localizer.map_dir, m.localizer.manifest.summary)
    logger.info("serving %d maps at http://%s:%d (API: /openapi.json; default map %s)", len(service.maps),
                bound_host, bound_port, service.default)
    try:
        _Server(_config(service, sock)).run(sockets=[sock])
    finally:
        sock.close()
        service.close()
        logger.info("stopped")
