"""Load test of the HTTP service: valid and malformed requests from concurrent clients.

    python benchmarks/serve_load.py --map MAP [--requests 500] [--clients 4] [--data ../shared/data]

Starts ``vloc.serve.app.serve`` on MAP in a separate process (a free port, read back from its
log), waits for ``/health``, then sends ``--requests`` requests from ``--clients`` threads, each
with its own keep-alive connection. Three in four are valid (the KITTI query images as raw bytes
with their cameras); the rest are malformed in turn: an empty body, bad JSON, a wrong content
type and an oversize claimed Content-Length. Prints answered and lost requests, counts per status
code, throughput, latency percentiles and the server's resident memory; exits non-zero on any
5xx, lost request or unexpected status. Needs no network beyond the loopback interface.
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from vloc.evaluation.server import HOST, start_server
from vloc.io.cameras import read_queries



@dataclass(frozen=True)
class Request:
    kind: str  # "valid" or the malformed kind
    path: str
    body: bytes
    headers: dict[str, str]
    expect: int


@dataclass
class Answer:
    request: Request
    status: int | None  # None: lost (no answer)
    seconds: float
    localized: bool = False
    error: str = ""


def make_requests(data: Path, n: int) -> list[Request]:
    """Valid raw-image requests for every query with a camera, and one malformed in four."""
    root = data / "prepared" / "kitti"
    valid = []
    for q in read_queries(root / "queries.txt"):
        if q.camera is None:
            continue
        camera = dict(model=q.camera.model.name, width=q.camera.width, height=q.camera.height,
                      params=[float(p) for p in q.camera.params])
        valid.append(Request("valid", f"/localize?name={q.name}&camera={quote(json.dumps(camera))}",
                             (root / "images" / q.name).read_bytes(), {"Content-Type": "image/png"}, 200))
    if not valid:
        raise SystemExit(f"{root}: no queries with cameras")
    malformed = [
        Request("empty body", "/localize", b"", {"Content-Type": "image/png"}, 400),
        Request("bad JSON", "/localize", b'{"image_base64": ', {"Content-Type": "application/json"}, 400),
        Request("wrong type", "/localize", b"hello", {"Content-Type": "text/plain"}, 415),
        Request("oversize", "/localize", b"", {"Content-Type": "image/png", "Content-Length": str(10**12)}, 413),
    ]
    good, bad = itertools.cycle(valid), itertools.cycle(malformed)
    return [next(bad) if i % 4 == 3 else next(good) for i in range(n)]


def send(conn: http.client.HTTPConnection, req: Request) -> Answer:
    t = time.perf_counter()
    try:
        if "Content-Length" in req.headers:  # a claimed length the body does not have
            conn.putrequest("POST", req.path)
            for key, value in req.headers.items():
                conn.putheader(key, value)
            conn.endheaders(req.body)
        else:
            conn.request("POST", req.path, body=req.body, headers=req.headers)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()  # the next request reconnects
        return Answer(req, None, time.perf_counter() - t, error=f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - t
    try:
        doc = json.loads(body)
    except ValueError:
        return Answer(req, response.status, seconds, error="response is not JSON")
    return Answer(req, response.status, seconds, localized=doc.get("status") == "localized")


def rss_mib(pid: int) -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def run_load(port: int, pid: int, requests: list[Request], clients: int) -> tuple[list[Answer], float, list]:
    """Send ``requests`` from ``clients`` threads; ``(answers, wall seconds, RSS samples)``."""
    jobs = iter(enumerate(requests))
    lock = threading.Lock()
    answers: list[Answer] = []
    memory = [("start", *rss_mib(pid))]

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        while True:
            with lock:
                job = next(jobs, None)
            if job is None:
                break
            answer = send(conn, job[1])
            with lock:
                answers.append(answer)
                if len(answers) == len(requests) // 2:
                    memory.append(("middle", *rss_mib(pid)))
        conn.close()

    t = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    memory.append(("end", *rss_mib(pid)))
    return answers, wall, memory


def percentiles(seconds: list[float]) -> str:
    if not seconds:
        return f"{'-':>9}" * 4
    p = np.percentile(np.array(seconds) * 1000, [50, 90, 99])
    return "".join(f"{v:>9.1f}" for v in p) + f"{max(seconds) * 1000:>9.1f}"


def report(answers: list[Answer], sent: int, clients: int, wall: float, memory: list) -> bool:
    """Print the table; True when nothing went wrong (no 5xx, nothing lost, only expected codes)."""
    answered = [a for a in answers if a.status is not None]
    codes = Counter(a.status for a in answered)
    unexpected = [a for a in answered if a.status != a.request.expect]
    valid = [a for a in answered if a.request.kind == "valid"]
    fivexx = sum(n for c, n in codes.items() if c >= 500)
    lost = sent - len(answered)
    print(f"\n{'requests sent':<28}{sent:>9}   ({clients} concurrent clients)")
    print(f"{'answered':<28}{len(answered):>9}")
    print(f"{'lost (no answer)':<28}{lost:>9}")
    for code in sorted(codes):
        print(f"{f'  status {code}':<28}{codes[code]:>9}")
    print(f"{'5xx':<28}{fivexx:>9}")
    print(f"{'unexpected status':<28}{len(unexpected):>9}")
    print(f"{'valid queries localized':<28}{sum(a.localized for a in valid):>9} of {len(valid)}")
    print(f"{'throughput':<28}{len(answered) / wall:>9.2f} req/s over {wall:.1f} s")
    print(f"\n{'latency (ms)':<28}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    groups = [("valid", lambda k: k == "valid"), ("malformed", lambda k: k != "valid")]
    groups += [(f"  {kind}", lambda k, kind=kind: k == kind)
               for kind in sorted({a.request.kind for a in answered} - {"valid"})]
    for label, pick in groups:
        print(f"{label:<28}{percentiles([a.seconds for a in answered if pick(a.request.kind)])}")
    print(f"\n{'server memory (MiB)':<28}{'VmRSS':>9}{'VmHWM':>9}")
    for label, rss, hwm in memory:
        print(f"{label:<28}{rss:>9.1f}{hwm:>9.1f}")
    for a in (unexpected + [a for a in answers if a.status is None])[:10]:
        print(f"problem: {a.request.kind}: expected {a.request.expect}, got {a.status} {a.error}")
    return fivexx == 0 and lost == 0 and not unexpected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--map", type=Path, required=True, help="a built map directory")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("VLOC_DATA", "../shared/data")))
    args = parser.parse_args()
    requests = make_requests(args.data, args.requests)
    log: list[str] = []
    t = time.perf_counter()
    proc, port = start_server(args.map.resolve(), log)
    print(f"server pid {proc.pid} on port {port}, ready after {time.perf_counter() - t:.1f} s")
    try:
        answers, wall, memory = run_load(port, proc.pid, requests, args.clients)
    finally:
        proc.send_signal(signal.SIGINT)  # serve() shuts down cleanly on KeyboardInterrupt
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    ok = report(answers, len(requests), args.clients, wall, memory)
    print(f"{'server exit code':<28}{code:>9}   (after SIGINT)")
    errors = [i for i, line in enumerate(log) if line.startswith(("ERROR", "Traceback", "Exception"))]
    print(f"{'server errors logged':<28}{len(errors):>9}")
    if errors:
        print("\n".join(log[errors[0]:errors[0] + 25]))
    return 0 if ok and code == 0 and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
