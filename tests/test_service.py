"""The production side of the service: the generated OpenAPI document (validated, and a client
written only from it), several maps, backpressure, deadlines, slow senders, metrics, request ids
and SIGTERM. Stand-in localizers (no map, a set delay) keep the timing tests fast and exact."""
from __future__ import annotations

import base64
import http.client
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from vloc.evaluation.server import read_until_closed
from vloc.serve.app import Service

STAND_IN = '''
import time
from dataclasses import dataclass, field
from vloc.localization.result import LocalizationResult


@dataclass
class Counts:
    images: int = 3


@dataclass
class Manifest:
    summary: str = "stand-in"
    counts: Counts = field(default_factory=Counts)
    vloc_version: str = "0"
    created: str = "now"


@dataclass
class Preset:
    name: str = "stand-in"


class StandIn:
    """Answers every query after ``delay`` seconds with a failure (no pose is ever made up)."""

    def __init__(self, delay: float = 0.0, map_dir: str = "stand-in"):
        self.delay, self.map_dir, self.manifest, self.preset, self.num_images = delay, map_dir, Manifest(), Preset(), 3

    def localize(self, image, camera=None, prior=None, name=None):
        time.sleep(self.delay)
        return LocalizationResult(name or "query", False, "too few keypoints (0 < 20)", timings={"features": self.delay})
'''
namespace: dict = {}
exec(compile(STAND_IN, "stand_in", "exec"), namespace)  # the same class for the in-process tests and the child
StandIn = namespace["StandIn"]


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 30) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _png(size: int = 8) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (size, size), 128).save(buffer, format="PNG")
    return buffer.getvalue()


TINY_PNG = _png()  # decodes; the stand-in answers it with a failure


def localize(port: int, path: str = "/localize", **headers) -> tuple[int, dict, bytes]:
    return request(port, "POST", path, TINY_PNG, {"Content-Type": "image/png", **headers})


def test_openapi_document_validates():
    from openapi_spec_validator import validate

    spec = Service({"a": StandIn()}).app().openapi()
    validate(spec)
    body = spec["paths"]["/maps/{name}/localize"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["$ref"] == "#/components/schemas/LocalizeJSON"
    assert {"LocalizeJSON", "LocalizeForm", "CameraModel", "PriorModel", "LocalizeResponse"} <= set(
        spec["components"]["schemas"])
    assert {"503", "504", "413", "408"} <= set(spec["paths"]["/localize"]["post"]["responses"])


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_a_client_written_from_the_document_localizes(kitti, kitti_map, serve):
    """Every name this client uses (path, body keys, response keys) is read from /openapi.json."""
    from vloc.io.cameras import read_queries
    from vloc.io.poses import read_poses
    from vloc.localization.localizer import Localizer

    port = serve({"kitti": Localizer.load(kitti_map)})
    spec = json.loads(request(port, "GET", "/openapi.json")[2])
    path = next(p for p in spec["paths"] if "{name}" in p and p.endswith("/localize"))
    op = spec["paths"][path]["post"]
    body_schema = _resolve(spec, op["requestBody"]["content"]["application/json"]["schema"])
    cameras = _resolve(spec, body_schema["properties"]["camera"]["anyOf"][0])  # one schema per COLMAP model
    image_key = next(k for k, v in body_schema["properties"].items() if v.get("type") == "string"
                     and k in body_schema.get("required", []))
    query = read_queries(kitti.queries)[0]
    camera_schema = _resolve(spec, {"$ref": cameras["discriminator"]["mapping"][query.camera.model.name]})
    assert camera_schema["properties"]["params"]["minItems"] == len(query.camera.params)
    camera = dict(zip(camera_schema["required"], (query.camera.model.name, query.camera.width, query.camera.height,
                                                  [float(p) for p in query.camera.params])))
    body = {image_key: base64.b64encode((kitti.images / query.name).read_bytes()).decode(), "camera": camera,
            "name": query.name}
    status, _, raw = request(port, "POST", path.replace("{name}", "kitti"), json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
    answer = json.loads(raw)
    response_schema = _resolve(spec, op["responses"]["200"]["content"]["application/json"]["schema"])
    assert status == 200 and set(response_schema["required"]) <= set(answer)
    assert answer["status"] == "localized" and answer["map"] == "kitti"
    from vloc.evaluation.metrics import pose_error
    from vloc.io.poses import rigid_from_qt

    pose = answer["cam_from_world"]
    dt, dr = pose_error(rigid_from_qt(pose["qvec"], pose["tvec"]), read_poses(kitti.gt)[query.name])
    assert dt < 0.05 and dr < 0.2


def test_several_maps_and_shared_models(kitti_map, serve):
    from vloc.localization.localizer import Localizer
    from vloc.serve.server import load_maps

    maps = load_maps([f"one={kitti_map}", f"two={kitti_map}"])
    assert maps["one"].layer.extractor is maps["two"].layer.extractor  # one model per preset
    assert maps["one"].store is not maps["two"].store
    with pytest.raises(ValueError, match="distinct"):
        load_maps([f"one={kitti_map}", f"one={kitti_map}"])
    assert isinstance(maps["one"], Localizer)
    port = serve({"a": StandIn(), "b": StandIn()})
    listing = json.loads(request(port, "GET", "/maps")[2])
    assert [m["name"] for m in listing["maps"]] == ["a", "b"] and listing["default"] == "a"
    status, _, raw = localize(port, "/maps/b/localize")
    assert status == 200 and json.loads(raw)["map"] == "b"
    assert json.loads(localize(port)[2])["map"] == "a"
    status, _, raw = localize(port, "/maps/c/localize")
    assert status == 404 and "no map 'c'" in json.loads(raw)["error"]


def concurrently(port: int, n: int, gap_s: float) -> list[tuple[int, dict, bytes]]:
    """``n`` localizations from ``n`` threads started ``gap_s`` apart; their answers."""
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(localize(port))) for _ in range(n)]
    for t in threads:
        t.start()
        time.sleep(gap_s)
    for t in threads:
        t.join(30)
    return answers


def test_a_full_queue_answers_503_with_retry_after(serve):
    port = serve({"a": StandIn(delay=1.0)}, queue=2)
    answers = concurrently(port, 5, 0.05)
    statuses = sorted(a[0] for a in answers)
    assert statuses == [200, 200, 503, 503, 503]
    busy = [a for a in answers if a[0] == 503]
    assert all(a[1]["retry-after"] == "1" and "busy" in json.loads(a[2])["error"] for a in busy)
    assert localize(port)[0] == 200  # the queue drained


def test_the_deadline_answers_504_with_the_stage(serve):
    port = serve({"a": StandIn(delay=1.5)}, timeout_s=0.5)
    answers = concurrently(port, 2, 0.1)
    stages = sorted(json.loads(a[2])["stage"] for a in answers if a[0] == 504)
    assert stages == ["localizing", "queued"]  # the second waited behind the first


def test_a_slow_sender_is_cut_off(serve):
    port = serve({"a": StandIn()}, body_timeout_s=1.0)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /localize HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n")
    t = time.monotonic()
    answer = b""
    try:
        for _ in range(20):  # one byte every 0.25 s: 100 bytes would take 25 s
            sock.sendall(b"x")
            time.sleep(0.25)
    except OSError:
        pass  # the server closed the connection
    answer += read_until_closed(sock, 5)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - t < 6
    assert request(port, "GET", "/health")[0] == 200  # the worker was never held


def test_metrics_and_request_ids(serve, caplog):
    import logging

    port = serve({"a": StandIn()}, log_json=True)
    with caplog.at_level(logging.INFO, logger="vloc.serve.access"):
        status, headers, _ = localize(port, **{"X-Request-ID": "abc123"})
        assert status == 200 and headers["x-request-id"] == "abc123"
        assert len(localize(port)[1]["x-request-id"]) == 16  # made up when not given
        assert request(port, "POST", "/localize", b"x", {"Content-Type": "text/plain"})[0] == 415
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "vloc.serve.access"]
    first = next(line for line in lines if line["request_id"] == "abc123")
    assert first["status"] == 200 and first["result"] == "failed" and first["reason"].startswith("too few")
    status, headers, raw = request(port, "GET", "/metrics")
    text = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'vloc_requests_total{path="/localize",status="200"} 2.0' in text
    assert 'vloc_requests_total{path="/localize",status="415"} 1.0' in text
    assert 'vloc_localizations_total{map="a",reason="too few keypoints",status="failed"} 2.0' in text
    assert 'vloc_queue_depth{map="a"} 0.0' in text and 'vloc_stage_seconds_bucket{le="0.005",map="a",stage="queue"}' in text


CHILD = STAND_IN + '''
import sys
from vloc.serve.app import ServeConf, Service
from vloc.serve.server import run_service
import logging
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
run_service(Service({"a": StandIn(delay=1.0)}, ServeConf(queue=8)), "127.0.0.1", int(sys.argv[1]))
'''


def test_sigterm_answers_what_was_sent_and_exits_0():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(port)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(localize(port))) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # all three are in: one localizing, two queued
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert proc.wait(10) == 0 and time.monotonic() - t0 < 10
        assert sorted(a[0] for a in answers) == [200, 200, 200]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_an_oversize_body_is_read_and_dropped_before_the_413(serve):
    port = serve({"a": StandIn()}, max_bytes=1000)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/localize", body=bytes(300_000), headers={"Content-Type": "image/png"})
    response = conn.getresponse()
    assert response.status == 413 and "over the limit" in json.loads(response.read())["error"]
    assert response.getheader("Connection") is None  # drained: the same connection serves the next request
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()
