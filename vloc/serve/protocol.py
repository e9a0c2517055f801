"""uvicorn's HTTP/1.1 protocol (h11) with the two guards it lacks against slow request heads.

uvicorn bounds the time between requests on a kept-alive connection, but not the time a client
takes to send a request line and headers: a client sending them a byte at a time, or connecting
and sending nothing, held its connection for ever. Here:

- **head deadline**: a connection must deliver a complete request head within
  ``head_timeout_s`` of its first byte (or of connecting); else it is answered 408 and closed.
- **connection cap**: past ``max_connections`` open connections, a new connection closes the
  oldest one still waiting for its request head (408), so slow-head clients cannot crowd out the
  others; when every open connection is busy with a request, the new one is answered 503.

Requests in flight are never cut by either guard: their bodies have the service's own deadline.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)


def _raw_response(status: int, reason: str, message: str) -> bytes:
    """A complete ``Connection: close`` response with a JSON ``{"error": message}`` body."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """:class:`H11Protocol` with a request-head deadline and a connection cap (module docstring).
    Use :func:`guarded_protocol` to set the limits."""

    head_timeout_s: float = 10.0
    max_connections: int = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self.waiting_since: float | None = None  # when this connection began waiting for a request head

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_head()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self.waiting_since is None:
            self._wait_for_head()  # the first byte of a kept-alive connection's next request
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_arrived()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def _wait_for_head(self) -> None:
        self._head_arrived()
        self.waiting_since = time.monotonic()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_late)

    def _head_arrived(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer, self.waiting_since = None, None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE:
            self.refuse(408, "Request Timeout", f"the request line and headers did not arrive within "
                        f"{self.head_timeout_s:g} s")

    def refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` and close; only for a connection with no request in flight."""
        self._head_arrived()
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, reason, message))
            self.transport.close()

    def _make_room(self) -> None:
        live = [c for c in self.connections if isinstance(c, GuardedH11Protocol) and not c.transport.is_closing()]
        if len(live) <= self.max_connections:
            return  # the rest are closing already
        waiting = [c for c in live if c is not self and c.waiting_since is not None]
        if waiting:
            oldest = min(waiting, key=lambda c: c.waiting_since)
            logger.debug("%d connections open (limit %d): closing one that has waited %.1f s for its request head",
                         len(live), self.max_connections, time.monotonic() - oldest.waiting_since)
            oldest.refuse(408, "Request Timeout", "closed to make room: the request head was too slow")
        else:
            logger.warning("%d connections open (limit %d), all busy: refusing a new one", len(live),
                           self.max_connections)
            self.refuse(503, "Service Unavailable", f"{self.max_connections} connections are busy; retry later")


def guarded_protocol(head_timeout_s: float, max_connections: int) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass with these limits (uvicorn's ``http`` option)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"head_timeout_s": head_timeout_s, "max_connections": max_connections})
