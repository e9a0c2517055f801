"""The HTTP service in a child process, for the benchmarks that measure it from outside."""
from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
SERVER_CODE = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("vloc.serve.access").setLevel(logging.WARNING)  # one line per request: not for a load test
from vloc.serve.app import ServeConf
from vloc.serve.server import serve
serve(json.loads(sys.argv[1]), "127.0.0.1", 0, preset=sys.argv[2] or None, conf=ServeConf(**json.loads(sys.argv[3])))
"""


def start_server(maps: Path | str | list[str], log: list[str], preset: str | None = None,
                 **conf) -> tuple[subprocess.Popen, int]:
    """The service in its own process (``maps``: a map directory or ``NAME=DIR`` specs; ``conf``:
    :class:`~vloc.serve.app.ServeConf` fields); its port, from the "serving ... at http://HOST:PORT" log line."""
    specs = [str(maps)] if isinstance(maps, (str, Path)) else [str(m) for m in maps]
    proc = subprocess.Popen([sys.executable, "-c", SERVER_CODE, json.dumps(specs), preset or "", json.dumps(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found = threading.Event()
    port: list[int] = []

    def drain() -> None:  # keep reading so the server never blocks on a full pipe
        for line in proc.stderr:  # type: ignore[union-attr]
            log.append(line.rstrip())
            match = re.search(r"serving .* at http://[^:]+:(\d+)", line)
            if match and not found.is_set():
                port.append(int(match.group(1)))
                found.set()
        found.set()

    threading.Thread(target=drain, daemon=True).start()
    if not found.wait(180) or not port:
        proc.kill()
        raise SystemExit("the server did not start:\n" + "\n".join(log[-30:]))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port[0], timeout=5)
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            conn.close()
            if response.status == 200:
                return proc, port[0]
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server never answered /health:\n" + "\n".join(log[-30:]))


def read_until_closed(sock, timeout_s: float) -> bytes:
    """What ``sock`` still receives until the peer closes it (or ``timeout_s`` of silence)."""
    sock.settimeout(timeout_s)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except OSError:
        pass
    return out


def open_slow_heads(port: int, n: int, start: bytes = b"POST /localize HTTP/1.1\r\nHo") -> list[socket.socket]:
    """``n`` non-blocking connections that have sent the first bytes of a request head and stop
    there (a slow-head client; the caller drips the rest)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection((HOST, port), timeout=10)
        s.sendall(start)
        s.setblocking(False)
        socks.append(s)
    return socks
