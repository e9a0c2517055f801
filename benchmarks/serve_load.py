"""Load test of the service: two maps, valid and malformed requests from concurrent clients.

    python benchmarks/serve_load.py --work DIR [--requests 2000] [--clients 8] [--sigterm-after 20]
                                    [--data ../shared/data]

Builds (once, under ``--work``) sift maps of kitti and virtual_gallery, starts ``vloc serve`` on
both in a separate process (a free port, read back from its log; a 2 MiB body limit and a 1 s body
deadline, so that oversize bodies and slow senders are cheap to make), waits for ``/health``, then:

1. a single client sends valid queries only: the single-client rate;
2. ``--clients`` threads, each with its own keep-alive connection, send ``--requests`` requests:
   two in three valid (each set's queries against its own map by ``/maps/NAME/localize``, as raw
   bytes, multipart and JSON in turn), one in three malformed (bad JSON, wrong types, missing
   fields, truncated and corrupt images, oversize bodies, wrong content types, slow senders);
3. with ``--sigterm-after S``: a second load run that sends SIGTERM S seconds in; every request
   sent before the signal must be answered and the process must exit 0 within 10 s.

Prints counts per status, lost requests, 5xx, unexpected answers, 503s (with Retry-After),
throughput against the single-client rate, latency percentiles per status, and the server's
resident memory per quarter of the run (RssAnon, the server's own allocations, and VmRSS, which
adds the map files' resident pages). Exits non-zero when a requirement is missed.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from vloc.evaluation.server import HOST, read_until_closed, start_server
from vloc.io.cameras import read_queries

MAX_BYTES = 2 * 2**20
BODY_TIMEOUT_S = 1.0
SETS = ("kitti", "virtual_gallery")


@dataclass(frozen=True)
class Request:
    kind: str  # "valid" or the malformed kind
    path: str
    body: bytes
    headers: dict[str, str]
    expect: tuple[int, ...]  # acceptable statuses (valid: 200, or 503 when the queue is full)
    slow: bool = False  # send the body one byte every 0.2 s


@dataclass
class Answer:
    request: Request
    status: int | None  # None: lost (no answer)
    sent: float  # monotonic time the request started
    seconds: float
    retry_after: bool = False
    localized: bool = False
    error: str = ""


def _camera(q) -> dict:
    c = q.camera
    return dict(model=c.model.name, width=c.width, height=c.height, params=[float(p) for p in c.params])


def _multipart(image: bytes, fields: dict[str, str], boundary: str = "vloc-load-1f2e") -> tuple[bytes, str]:
    out = b""
    for name, value in {"image": image, **fields}.items():
        filename = '; filename="q.png"' if name == "image" else ""
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode()
        out += (value if isinstance(value, bytes) else value.encode()) + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def valid_requests(data: Path) -> list[Request]:
    out = []
    for name in SETS:
        root = data / "prepared" / name
        for k, q in enumerate(q for q in read_queries(root / "queries.txt") if q.camera is not None):
            image, cam, path = (root / "images" / q.name).read_bytes(), _camera(q), f"/maps/{name}/localize"
            style = k % 3
            if style == 0:
                out.append(Request("valid", f"{path}?name={quote(q.name)}&camera={quote(json.dumps(cam))}", image,
                                   {"Content-Type": "image/png"}, (200, 503)))
            elif style == 1:
                body, ctype = _multipart(image, {"camera": json.dumps(cam), "name": q.name})
                out.append(Request("valid", path, body, {"Content-Type": ctype}, (200, 503)))
            else:
                body = json.dumps({"image_base64": base64.b64encode(image).decode(), "camera": cam, "name": q.name})
                out.append(Request("valid", path, body.encode(), {"Content-Type": "application/json"}, (200, 503)))
    return out


def malformed_requests(valid: list[Request]) -> list[Request]:
    image = next(r.body for r in valid if r.headers["Content-Type"] == "image/png")
    path = "/maps/kitti/localize"
    js = {"Content-Type": "application/json"}
    return [
        Request("bad JSON", path, b'{"image_base64": ', js, (400,)),
        Request("wrong types", path, json.dumps({"image_base64": "aGVsbG8=", "camera": {
            "model": "PINHOLE", "width": "640", "height": 480, "params": [1, 2, 3, 4]}}).encode(), js, (400,)),
        Request("missing fields", path, json.dumps({"camera": None, "name": "x"}).encode(), js, (400,)),
        Request("truncated image", path, image[: len(image) // 2], {"Content-Type": "image/png"}, (200,)),
        Request("corrupt image", path, bytes(np.random.default_rng(1).integers(0, 256, 50_000, np.uint8)),
                {"Content-Type": "image/png"}, (200,)),
        Request("oversize body", path, bytes(MAX_BYTES + 1), {"Content-Type": "image/png"}, (413,)),
        Request("wrong content type", path, b"hello", {"Content-Type": "text/plain"}, (415,)),
        Request("slow sender", path, image[:2000], {"Content-Type": "image/png"}, (408,), slow=True),
    ]


def send_slow(req: Request) -> tuple[int | None, dict, bytes]:
    """The headers, then the body a byte every 0.2 s until the server answers (it must: 408)."""
    sock = socket.create_connection((HOST, PORT[0]), timeout=30)
    try:
        head = (f"POST {req.path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {req.headers['Content-Type']}\r\n"
                f"Content-Length: {len(req.body)}\r\n\r\n").encode()
        sock.sendall(head)
        sock.settimeout(0.2)
        answer = b""
        for byte in req.body:
            try:
                sock.sendall(bytes([byte]))
                answer += sock.recv(65536)
                if answer:
                    break
            except socket.timeout:
                continue
            except OSError:
                break
        answer += read_until_closed(sock, 10)
    finally:
        sock.close()
    if not answer.startswith(b"HTTP/1.1 "):
        return None, {}, b""
    head, _, body = answer.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line)
    return int(head[9:12]), {k.lower(): v for k, v in headers.items()}, body


PORT: list[int] = []


def send(conn: http.client.HTTPConnection, req: Request) -> Answer:
    t, t_wall = time.perf_counter(), time.monotonic()
    try:
        if req.slow:
            status, headers, body = send_slow(req)
            if status is None:
                return Answer(req, None, t_wall, time.perf_counter() - t, error="no answer to a slow sender")
        else:
            conn.request("POST", req.path, body=req.body, headers=req.headers)
            response = conn.getresponse()
            body, status = response.read(), response.status
            headers = {k.lower(): v for k, v in response.getheaders()}
            if headers.get("connection") == "close":
                conn.close()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()  # the next request reconnects
        return Answer(req, None, t_wall, time.perf_counter() - t, error=f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - t
    try:
        doc = json.loads(body)
    except ValueError:
        return Answer(req, status, t_wall, seconds, error="response is not JSON")
    return Answer(req, status, t_wall, seconds, retry_after="retry-after" in headers,
                  localized=doc.get("status") == "localized")


def rss_mib(pid: int) -> tuple[float, float]:
    """``(RssAnon, VmRSS)`` of the server in MiB: RssAnon is what it allocated itself; VmRSS adds the
    resident pages of memory-mapped map files, which the kernel loads and evicts as it likes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def run_load(pid: int, requests: list[Request], clients: int, stop_at: float | None = None) -> tuple[list, float, list]:
    """Send ``requests`` from ``clients`` threads (until ``stop_at``, a monotonic time, when given)."""
    jobs = iter(requests)
    lock = threading.Lock()
    answers: list[Answer] = []
    memory: list[tuple[int, float]] = []

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, PORT[0], timeout=120)
        while True:
            with lock:
                req = next(jobs, None)
            if req is None or (stop_at is not None and time.monotonic() > stop_at + 3):
                break
            answer = send(conn, req)
            with lock:
                answers.append(answer)
                if len(answers) % max(len(requests) // 20, 1) == 0 and stop_at is None:
                    memory.append((len(answers), rss_mib(pid)))
        conn.close()

    t = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return answers, time.perf_counter() - t, memory


def percentiles(seconds: list[float]) -> str:
    if not seconds:
        return f"{'-':>9}" * 4
    p = np.percentile(np.array(seconds) * 1000, [50, 90, 99])
    return "".join(f"{v:>9.1f}" for v in p) + f"{max(seconds) * 1000:>9.1f}"


def report(answers: list[Answer], sent: int, clients: int, wall: float, memory: list, single_rate: float) -> bool:
    answered = [a for a in answers if a.status is not None]
    codes = Counter(a.status for a in answered)
    unexpected = [a for a in answered if a.status not in a.request.expect]
    valid = [a for a in answered if a.request.kind == "valid"]
    bad_5xx = sum(1 for a in answered if a.request.kind != "valid" and a.status >= 500)
    busy = [a for a in valid if a.status == 503]
    lost = sent - len(answered)
    rate = sum(1 for a in valid if a.status == 200) / wall
    print(f"\n{'requests sent':<32}{sent:>9}   ({clients} concurrent clients, one third malformed)")
    print(f"{'lost (no answer)':<32}{lost:>9}")
    for code in sorted(codes):
        print(f"{f'  status {code}':<32}{codes[code]:>9}")
    print(f"{'5xx for bad input':<32}{bad_5xx:>9}")
    print(f"{'unexpected status':<32}{len(unexpected):>9}")
    print(f"{'valid: 200 / 503':<32}{len(valid) - len(busy):>9} / {len(busy)} "
          f"({sum(a.retry_after for a in busy)} with Retry-After); localized {sum(a.localized for a in valid)}")
    print(f"{'valid localizations per s':<32}{rate:>9.2f}   single client {single_rate:.2f} "
          f"-> {rate / single_rate:.2f}x; all requests {len(answered) / wall:.2f}/s over {wall:.1f} s")
    print(f"\n{'latency (ms)':<32}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for code in sorted(codes):
        print(f"{f'  status {code}':<32}{percentiles([a.seconds for a in answered if a.status == code])}")
    for kind in sorted({a.request.kind for a in answered}):
        print(f"{f'  {kind}':<32}{percentiles([a.seconds for a in answered if a.request.kind == kind])}")
    steady = True
    for k, label in enumerate(("RssAnon", "VmRSS")):
        quarters = [[m[k] for n, m in memory if q * sent / 4 < n <= (q + 1) * sent / 4] for q in range(4)]
        later = [m for q in quarters[1:] for m in q]
        print(f"{f'server {label} MiB, min/max per quarter':<40}" + "".join(
            f"{(f'{min(q):.0f}/{max(q):.0f}' if q else '-'):>11}" for q in quarters))
        if k == 0 and later:  # the requirement is on the process's own memory
            # A sample falls anywhere in the working memory of the localizations in flight (two
            # SIFT scale spaces of a doubled kitti frame: ~200 MiB), so single samples swing; a
            # leak shows in the peaks: each quarter's peak within 10 % of the others' from the 2nd on.
            peaks = [max(q) for q in quarters[1:] if q]
            steady = max(peaks) <= 1.1 * min(peaks)
            print(f"{'RssAnon peaks within 10 %, quarters 2-4':<40}{str(steady):>11}   (peaks "
                  f"{' / '.join(f'{p:.0f}' for p in peaks)} MiB: max / min {max(peaks) / min(peaks):.3f}; "
                  f"all samples {min(later):.0f}-{max(later):.0f})")
    for a in (unexpected + [a for a in answers if a.status is None])[:10]:
        print(f"problem: {a.request.kind}: expected {a.request.expect}, got {a.status} {a.error}")
    return bad_5xx == 0 and lost == 0 and not unexpected and steady and rate >= 0.9 * single_rate


def build_maps(data: Path, work: Path) -> list[str]:
    from vloc.config import get_preset
    from vloc.io.datasets import open_prepared
    from vloc.mapping.build import build_map

    specs = []
    for name in SETS:
        ds, out = open_prepared(data / "prepared" / name), work / f"{name}-sift"
        if not out.exists():
            build_map(ds.images, out, get_preset("sift"), reference=ds.ref_model)
        specs.append(f"{name}={out.resolve()}")
    return specs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="maps are built here once")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--single", type=int, default=40, help="valid requests of the single-client run")
    parser.add_argument("--sigterm-after", type=float, help="also a second load run, SIGTERM this many seconds in")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    specs = build_maps(args.data, args.work)
    valid = valid_requests(args.data)
    bad = malformed_requests(valid)
    good_it, bad_it = itertools.cycle(valid), itertools.cycle(bad)
    requests = [next(bad_it) if i % 3 == 2 else next(good_it) for i in range(args.requests)]
    log: list[str] = []
    proc, port = start_server(specs, log, max_bytes=MAX_BYTES, body_timeout_s=BODY_TIMEOUT_S)
    PORT[:] = [port]
    print(f"server pid {proc.pid} on port {port}; load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    ok = True
    try:
        single, single_wall, _ = run_load(proc.pid, list(itertools.islice(itertools.cycle(valid), args.single)), 1)
        single_rate = sum(a.status == 200 for a in single) / single_wall
        answers, wall, memory = run_load(proc.pid, requests, args.clients)
        ok = report(answers, len(requests), args.clients, wall, memory, single_rate)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    print(f"{'server exit code':<32}{code:>9}   (SIGTERM after the run)")
    errors = [line for line in log if line.startswith(("ERROR", "Traceback"))]
    print(f"{'server errors logged':<32}{len(errors):>9}")
    ok &= code == 0 and not errors
    if args.sigterm_after:
        ok &= sigterm_run(specs, requests, args.clients, args.sigterm_after)
    return 0 if ok else 1


def sigterm_run(specs: list[str], requests: list[Request], clients: int, after: float) -> bool:
    log: list[str] = []
    proc, port = start_server(specs, log, max_bytes=MAX_BYTES, body_timeout_s=BODY_TIMEOUT_S)
    PORT[:] = [port]
    signal_at = time.monotonic() + after
    timer = threading.Timer(after, proc.send_signal, (signal.SIGTERM,))
    timer.start()
    answers, _, _ = run_load(proc.pid, requests, clients, stop_at=signal_at)
    try:
        code = proc.wait(max(signal_at + 10 - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        code = None
        proc.kill()
    exit_s = time.monotonic() - signal_at
    before = [a for a in answers if a.sent < signal_at]
    unanswered = [a for a in before if a.status is None]
    print(f"\nSIGTERM after {after:g} s: {len(before)} requests sent before it, {len(unanswered)} unanswered; "
          f"{len(answers) - len(before)} sent after it; exit code {code} {exit_s:.1f} s after the signal")
    for a in unanswered[:5]:
        print(f"problem: {a.request.kind} sent {signal_at - a.sent:.2f} s before the signal: {a.error}")
    return code == 0 and exit_s < 10 and not unanswered


if __name__ == "__main__":
    sys.exit(main())
