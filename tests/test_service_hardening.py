"""The service against tools nobody here wrote, and against hostile clients: an OpenAPI fuzzer
(schemathesis) finds no failure of any check, the schema states every camera model, bound and
status code the server uses, extreme numbers are no 500, and slow request heads hold nothing."""
from __future__ import annotations

import json
import select
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pycolmap
import pytest
from test_service import StandIn, localize, request

from vloc.evaluation.server import open_slow_heads
from vloc.serve.app import Service

# The fuzzer's own expectations, where the schema cannot carry ours: a body that is a schema-valid
# string of bytes but no decodable image is the client's error, 422 (the rule); 404 is an
# unknown map. Every other check runs as schemathesis ships it.
SCHEMATHESIS_CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "404", "422"]
"""


def _schemathesis() -> Path:
    path = Path(sys.executable).with_name("st")
    if not path.is_file():
        pytest.fail(f"schemathesis is not installed beside {sys.executable} (the test extra installs it)")
    return path


def test_schemathesis_finds_no_failure(kitti_map, serve, tmp_path):
    import subprocess

    from vloc.localization.localizer import Localizer

    port = serve({"kitti": Localizer.load(kitti_map)})
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    command = [str(_schemathesis()), "--config-file", str(config), "run", f"http://127.0.0.1:{port}/openapi.json",
               "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", "10",
               "--seed", "0", "--workers", "1", "--report", "junit", "--report-dir", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    summary = run.stdout[-6000:]
    assert run.returncode == 0, summary
    assert "No issues found" in run.stdout and "6 selected / 6 total" in run.stdout, summary
    generated = int(run.stdout.split(" generated, ")[0].rsplit(maxsplit=1)[-1])
    assert generated > 500, summary  # the coverage phase alone sends thousands of requests


def test_the_schema_names_every_camera_model_and_status():
    spec = Service({"a": StandIn(), "b": StandIn()}).app().openapi()
    schemas = spec["components"]["schemas"]
    mapping = schemas["CameraModel"]["discriminator"]["mapping"]
    models = {k for k in pycolmap.CameraModelId.__members__ if k != "INVALID"}
    assert set(mapping) == models
    pinhole = schemas["Camera_PINHOLE"]["properties"]
    assert pinhole["params"]["minItems"] == pinhole["params"]["maxItems"] == 4
    assert pinhole["width"]["exclusiveMinimum"] == 0
    operation = spec["paths"]["/maps/{name}/localize"]["post"]
    name = next(p for p in operation["parameters"] if p["in"] == "path")
    assert name["schema"]["enum"] == ["a", "b"]
    assert {"400", "404", "408", "411", "413", "415", "422", "503", "504"} <= set(operation["responses"])
    assert schemas["LocalizeJSON"]["properties"]["image_base64"]["pattern"]
    assert schemas["LocalizeForm"]["additionalProperties"] is False


EXTREME_PRIORS = [
    ([1e308, 1e308, 1e308, 1e308], [0, 0, 0], 1),  # overflowed the quaternion's norm: a 500
    ([1e-320, 0, 0, 0], [1e308, -1e308, 1e308], 1e300),  # the centre overflows to inf / nan
    ([1, 0, 0, 0], [1e200, 0, 0], 1e200),  # a ball far out: SciPy's KD-tree raised (squared distances)
    ([-1.2e308, 3e-296, 0, 1e-147], [-1e16, 0, -1.4e146], 2e16),
]


@pytest.mark.parametrize("qvec, tvec, radius", EXTREME_PRIORS)
def test_extreme_priors_are_no_server_error(kitti, kitti_map, serve, qvec, tvec, radius):
    """The library takes any finite prior (no exception); the service's schema bounds numbers to
    +-2^53 and answers such a prior 400, an in-bounds one 200."""
    from vloc.io.poses import rigid_from_qt
    from vloc.localization.localizer import Localizer
    from vloc.localization.result import Prior

    localizer = Localizer.load(kitti_map)
    image = (kitti.images / "000109.png").read_bytes()
    result = localizer.localize(image, None, Prior(rigid_from_qt(qvec, tvec), radius), "q")
    assert result.retrieval in ("global after prior", "prior"), result.reason
    port = serve({"kitti": localizer})
    for prior, code in (({"qvec": qvec, "tvec": tvec, "radius": radius}, 400),
                        ({"qvec": [min(max(v, -2**53), 2**53) for v in qvec],
                          "tvec": [min(max(v, -2**53), 2**53) for v in tvec], "radius": min(radius, 2**53)}, 200)):
        status, _, raw = request(port, "POST", "/localize?prior=" + quote(json.dumps(prior)), image,
                                 {"Content-Type": "image/png"})
        assert status == code, (prior, raw[:300])
        if code == 400:
            assert "within +-2^53" in json.loads(raw)["error"]


def test_unknown_methods_are_405_with_every_allowed_method(serve):
    port = serve({"a": StandIn()})
    for path, allowed in (("/health", "GET, HEAD"), ("/maps", "GET, HEAD"), ("/metrics", "GET, HEAD"),
                          ("/localize", "POST"), ("/maps/a/localize", "POST")):
        for method in ("OPTIONS", "DELETE", "PUT"):
            status, headers, raw = request(port, method, path)
            assert status == 405 and headers["allow"] == allowed, (method, path, headers)
            assert allowed in json.loads(raw)["error"]


def test_keep_alive_answers_are_not_held_by_nagle(serve):
    """A second request on a kept-alive connection was answered ~40 ms late (the server socket was
    not marked TCP, so asyncio left Nagle's algorithm on and the body waited for a delayed ACK)."""
    import http.client

    port = serve({"a": StandIn()})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    seconds = []
    for _ in range(12):
        t = time.perf_counter()
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        seconds.append(time.perf_counter() - t)
    conn.close()
    assert statistics.median(seconds[2:]) < 0.02, seconds  # 0.04 s each before, 0.002 s after


def _drip(socks: list[socket.socket], seconds: float) -> None:
    """One more header byte on every open socket each 0.3 s, for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in socks:
            try:
                s.send(b"s")
            except OSError:
                pass  # closed by the server
        time.sleep(0.3)


def _answers(socks: list[socket.socket], timeout: float) -> list[bytes]:
    """What each socket received before the server closed it (b"" for one still open at ``timeout``)."""
    got = {s: b"" for s in socks}
    open_ = set(socks)
    end = time.monotonic() + timeout
    while open_ and time.monotonic() < end:
        ready, _, _ = select.select(list(open_), [], [], 0.2)
        for s in ready:
            try:
                chunk = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                got[s] += chunk
            else:
                open_.discard(s)
    for s in socks:
        s.close()
    return [got[s] if s not in open_ else b"" for s in socks]


def test_slow_request_heads_hold_nothing(serve):
    """300 clients sending their request heads a byte at a time: a normal client keeps getting
    answers; past the connection cap the longest-waiting slow heads are closed at once, the rest
    at the head deadline, each with a 408."""
    port = serve({"a": StandIn()}, head_timeout_s=3.0, max_connections=200)
    socks = open_slow_heads(port, 300, b"GET /health HTTP/1.1\r\nHo")
    dripping = threading.Thread(target=_drip, args=(socks, 2.5), daemon=True)
    dripping.start()
    latencies = []
    for _ in range(10):
        t = time.perf_counter()
        assert request(port, "GET", "/health", timeout=5)[0] == 200
        assert localize(port)[0] == 200
        latencies.append(time.perf_counter() - t)
        time.sleep(0.1)
    dripping.join()
    answers = _answers(socks, timeout=6.0)
    assert max(latencies) < 1.0, latencies
    cut = sum(a.startswith(b"HTTP/1.1 408") for a in answers)
    assert cut == 300, f"{cut} of 300 slow heads answered 408; {sum(not a for a in answers)} still open"
    made_room = sum(b"make room" in a for a in answers)
    assert made_room >= 100, made_room  # 300 over a cap of 200 (+ the normal client's connections)
