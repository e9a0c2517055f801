"""Slow request heads against the service: N clients send their request line and headers a byte
every 0.3 s while one normal client localizes real queries; the table says how many slow
clients were still held when their drip ended, how many were answered 408 (and when), and what the
normal client got (answers, latency).

    python benchmarks/slow_heads.py --map maps/kitti --images ../shared/data/prepared/kitti/images \
        [--clients 0 300 1000 1500] [--head-timeout 10] [--max-connections 1000] [--drip 15]
"""
from __future__ import annotations

import argparse
import http.client
import select
import socket
import statistics
import threading
import time
from pathlib import Path

from vloc.evaluation.server import open_slow_heads
from vloc.localization.localizer import Localizer
from vloc.serve.app import ServeConf, Service
from vloc.serve.server import ThreadedServer


def drip(socks: list[socket.socket], seconds: float, closed_at: dict) -> None:
    """A byte on every socket each 0.3 s; notes when the server answered or closed each."""
    start, end = time.monotonic(), time.monotonic() + seconds
    while time.monotonic() < end:
        live = [s for s in socks if s not in closed_at]
        if live:
            poller = select.poll()  # select() stops at 1,024 descriptors
            for s in live:
                poller.register(s, select.POLLIN)
            by_fd = {s.fileno(): s for s in live}
            for fd, _ in poller.poll(0):
                closed_at[by_fd[fd]] = time.monotonic() - start
            for s in live:
                if s not in closed_at:
                    try:
                        s.send(b"s")
                    except OSError:
                        closed_at[s] = time.monotonic() - start
        time.sleep(0.3)


def normal_client(port: int, body: bytes, until: float) -> list[tuple[int, float]]:
    out = []
    while time.monotonic() < until:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        t = time.perf_counter()
        try:
            conn.request("POST", "/localize", body=body, headers={"Content-Type": "image/png"})
            response = conn.getresponse()
            response.read()
            out.append((response.status, time.perf_counter() - t))
        except OSError:
            out.append((0, time.perf_counter() - t))
        finally:
            conn.close()
    return out


def run(localizer: Localizer, body: bytes, n: int, args: argparse.Namespace) -> dict:
    conf = ServeConf(head_timeout_s=args.head_timeout, max_connections=args.max_connections)
    server = ThreadedServer(Service({"map": localizer}, conf))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        normal_client(port, body, time.monotonic() + 2)  # warm-up
        socks = open_slow_heads(port, n)
        closed_at: dict = {}
        dripper = threading.Thread(target=drip, args=(socks, args.drip, closed_at))
        dripper.start()
        answers = normal_client(port, body, time.monotonic() + args.drip)
        dripper.join()
        held = sum(s not in closed_at for s in socks)
        got_408 = 0
        for s in socks:
            try:
                got_408 += s.recv(64).startswith(b"HTTP/1.1 408")
            except OSError:
                pass
            s.close()
        seconds = [t for status, t in answers if status == 200]
        return dict(slow=n, held=held, cut=got_408, cut_by=max(closed_at.values(), default=0.0),
                    ok=len(seconds), sent=len(answers), median=statistics.median(seconds) if seconds else float("nan"),
                    worst=max(seconds, default=float("nan")))
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--map", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder of the query image (first image used)")
    parser.add_argument("--clients", type=int, nargs="+", default=[0, 300, 1000, 1500])
    parser.add_argument("--head-timeout", type=float, default=10.0)
    parser.add_argument("--max-connections", type=int, default=1000)
    parser.add_argument("--drip", type=float, default=15.0, help="seconds the slow clients drip and the normal one runs")
    args = parser.parse_args()
    localizer = Localizer.load(args.map)
    body = sorted(args.images.iterdir())[-1].read_bytes()
    print(f"head timeout {args.head_timeout:g} s, max connections {args.max_connections}, drip {args.drip:g} s")
    print(f"{'slow':>6} {'held at end':>11} {'408':>6} {'cut by s':>8} {'answers':>9} {'median s':>9} {'worst s':>8}")
    for n in args.clients:
        r = run(localizer, body, n, args)
        print(f"{r['slow']:>6} {r['held']:>11} {r['cut']:>6} {r['cut_by']:>8.1f} {r['ok']:>4}/{r['sent']:<4} "
              f"{r['median']:>9.3f} {r['worst']:>8.3f}")


if __name__ == "__main__":
    main()
