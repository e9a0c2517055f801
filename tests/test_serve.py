"""The HTTP service: endpoints, the three body types of POST /localize, and malformed requests."""
from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from vloc.evaluation.metrics import pose_error
from vloc.io.cameras import read_queries
from vloc.io.poses import qt_from_rigid, read_poses, rigid_from_qt
from vloc.localization.localizer import Localizer
from vloc.serve.server import make_server

QUERY = "000109.png"
BOUNDARY = "vloc-test-boundary-7MA4YWxk"


def start(localizer, **kwargs) -> tuple:
    server = make_server(localizer, port=0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def stop(server, thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def localizer(kitti_map) -> Localizer:
    return Localizer.load(kitti_map)


@pytest.fixture(scope="module")
def port(localizer) -> Iterator[int]:
    server, thread = start(localizer)
    yield server.server_address[1]
    stop(server, thread)


@pytest.fixture(scope="module")
def image(kitti) -> bytes:
    return (kitti.images / QUERY).read_bytes()


@pytest.fixture(scope="module")
def camera(kitti) -> dict:
    cam = {q.name: q.camera for q in read_queries(kitti.queries)}[QUERY]
    return dict(model=cam.model.name, width=cam.width, height=cam.height, params=[float(p) for p in cam.params])


@pytest.fixture(scope="module")
def truth(kitti):
    return read_poses(kitti.gt)[QUERY]


def call(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, http.client.HTTPResponse, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    assert response.getheader("Content-Type") == "application/json"
    assert int(response.getheader("Content-Length")) == len(raw)
    return response.status, response, json.loads(raw) if raw else {}


def post(port: int, body: bytes, content_type: str | None, path: str = "/localize") -> tuple[int, dict]:
    status, _, doc = call(port, "POST", path, body, {"Content-Type": content_type} if content_type else {})
    return status, doc


def multipart(parts: dict[str, bytes | str]) -> bytes:
    out = b""
    for name, value in parts.items():
        filename = f'; filename="{QUERY}"' if name == "image" else ""
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n"
                f"Content-Type: {'image/png' if name == 'image' else 'text/plain'}\r\n\r\n").encode()
        out += (value if isinstance(value, bytes) else value.encode()) + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def assert_localized(doc: dict, truth, name: str = "query") -> None:
    assert doc["status"] == "localized", doc["reason"]
    assert doc["name"] == name and doc["intrinsics"] == "given"
    pose = doc["cam_from_world"]
    dt, dr = pose_error(rigid_from_qt(pose["qvec"], pose["tvec"]), truth)
    assert dt < 0.05 and dr < 0.2, (dt, dr)
    assert len(doc["covariance"]) == 6 and all(len(row) == 6 for row in doc["covariance"])


def test_health_map_and_openapi(port, localizer):
    assert call(port, "GET", "/health")[2] == {"status": "ok"}
    status, _, info = call(port, "GET", "/map")
    assert status == 200 and info["preset"] == "sift" and info["indexed_images"] == localizer.num_images
    assert info["summary"] == localizer.manifest.summary and info["counts"]["images"] > 0 and info["vloc_version"]
    status, _, spec = call(port, "GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")  # FastAPI's generated document: OpenAPI 3.1
    assert {"/health", "/map", "/maps", "/metrics", "/localize", "/maps/{name}/localize"} <= set(spec["paths"])
    assert {"image/png", "multipart/form-data", "application/json"} <= set(
        spec["paths"]["/localize"]["post"]["requestBody"]["content"])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("HEAD", "/health")
    response = conn.getresponse()
    assert response.status == 200 and int(response.getheader("Content-Length")) > 0 and response.read() == b""
    conn.close()


def test_localize_raw_bytes(port, image, camera, truth):
    status, doc = post(port, image, "image/png", f"/localize?camera={quote(json.dumps(camera))}&name={QUERY}")
    assert status == 200
    assert_localized(doc, truth, QUERY)
    assert doc["retrieval"] == "global" and doc["camera"]["model"] == "PINHOLE"


def test_localize_multipart(port, image, camera, truth):
    status, doc = post(port, multipart({"image": image, "camera": json.dumps(camera)}), MULTIPART)
    assert status == 200
    assert_localized(doc, truth, QUERY)  # the name defaults to the image part's filename


def test_localize_json_base64_with_prior(port, image, camera, truth):
    q, t = qt_from_rigid(truth)
    prior = {"qvec": q.tolist(), "tvec": (t + [0.5, 0.0, 0.3]).tolist(), "radius": 2.0}
    body = json.dumps({"image_base64": base64.b64encode(image).decode(), "camera": camera, "prior": prior,
                       "name": "with-prior"}).encode()
    status, doc = post(port, body, "application/json; charset=utf-8")
    assert status == 200
    assert_localized(doc, truth, "with-prior")
    assert doc["retrieval"] == "prior"


def test_undecodable_images_are_422_with_the_decoders_message(port, image):
    for body, says in ((b"\x89PNG\r\n\x1a\n not really a png", "not an image in a format Pillow decodes"),
                       (b"hello, I am text", "not an image in a format Pillow decodes"),
                       (image[:len(image) // 2], "image file is truncated")):
        status, doc = post(port, body, "image/png")
        assert status == 422 and "cannot read image" in doc["error"] and says in doc["error"], doc
    status, doc = post(port, as_json(image_base64=base64.b64encode(image[:100]).decode()), "application/json")
    assert status == 422 and "cannot read image" in doc["error"], doc


def test_failed_queries_are_200(port, image, camera):
    status, doc = post(port, b"P5 4 4 255\n" + bytes(16), "image/png")  # a decodable 4x4 image: nothing to match
    assert status == 200 and doc["status"] == "failed" and "too few keypoints" in doc["reason"], doc
    assert doc["cam_from_world"] is None and doc["covariance"] is None
    wrong_size = dict(camera, width=640, height=480)
    status, doc = post(port, image, "application/octet-stream", f"/localize?camera={quote(json.dumps(wrong_size))}")
    assert status == 200 and doc["status"] == "failed" and "640x480" in doc["reason"]


def as_json(**fields) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize("body, content_type, path, code", [
    (b"", "image/png", "/localize", 400),  # empty body
    (b"{not json", "application/json", "/localize", 400),
    (b"[1, 2]", "application/json", "/localize", 400),  # JSON, but not an object
    (as_json(image_base64="%%% not base64 %%%"), "application/json", "/localize", 400),
    (as_json(image_base64="aGVsbG8=", camera=[1, 2]), "application/json", "/localize", 400),
    (as_json(image_base64="aGVsbG8=", camera={"model": "PINHOLE", "width": 10}), "application/json", "/localize", 400),
    (as_json(image_base64="aGVsbG8=", prior={"qvec": [1, 0, 0], "tvec": [0, 0, 0], "radius": 1}),
     "application/json", "/localize", 400),
    (as_json(image_b64="aGVsbG8="), "application/json", "/localize", 400),  # unknown key
    (b"abc", "image/png", "/localize?camera=" + quote("[1, 2]"), 400),  # camera JSON not an object
    (b"abc", "image/png", "/localize?camera=" + quote("{bad"), 400),
    (b"abc", "image/png", "/localize?camera=" + quote(json.dumps(
        {"model": "NOPE", "width": 2, "height": 2, "params": [1]})), 400),
    (b"abc", "image/png", "/localize?prior=" + quote('{"radius": 1}'), 400),
    (b"abc", "image/png", "/localize?colour=red", 400),  # unknown query parameter
    (multipart({"camera": "{}"}), MULTIPART, "/localize", 400),  # no image part
    (b"--elsewhere\r\n\r\nabc", MULTIPART, "/localize", 400),  # boundary not in the body
    (b"abc", "multipart/form-data", "/localize", 400),  # no boundary parameter
    (b"abc", "text/plain", "/localize", 415),
    (b"abc", None, "/localize", 415),
    (b"abc", "image/png", "/nowhere", 404),
])
def test_malformed_requests(port, body, content_type, path, code):
    status, doc = post(port, body, content_type, path)
    assert status == code and isinstance(doc["error"], str) and doc["error"], doc


def test_wrong_method_and_unknown_path(port):
    status, response, doc = call(port, "GET", "/localize")
    assert status == 405 and response.getheader("Allow") == "POST" and doc["error"]
    assert call(port, "DELETE", "/health")[0] == 405
    assert call(port, "BREW", "/health")[0] == 405  # not http.server's 501
    assert call(port, "GET", "/nowhere")[0] == 404


def test_length_required(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/localize")
    conn.putheader("Content-Type", "image/png")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411 and json.loads(response.read())["error"]
    conn.close()
    # A chunked body, sent in one write: http.client sends the chunks after the headers, and the server may have
    # answered and closed by then, which resets the connection before the answer is read (a race, seen once).
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /localize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 411 and response.getheader("Connection") == "close"
        assert "chunked" in json.loads(response.read())["error"]


def test_too_large(localizer, image):
    server, thread = start(localizer, max_bytes=1000)
    try:
        port = server.server_address[1]
        with pytest.raises(urllib.error.HTTPError) as info:  # the body really is sent
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/localize", data=image[:50_000],
                                                          headers={"Content-Type": "image/png"}), timeout=30)
        assert info.value.code == 413 and "over the limit" in json.loads(info.value.read())["error"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # only claimed
        conn.request("POST", "/localize", body=b"abc", headers={"Content-Type": "image/png",
                                                                "Content-Length": str(10**9)})
        response = conn.getresponse()
        assert response.status == 413 and response.getheader("Connection") == "close"
        conn.close()
        assert post(port, b"small but no image", "image/png")[0] == 422  # under the limit: read, not an image
    finally:
        stop(server, thread)


def test_keep_alive_survives_errors(port):
    """Answered bodies are fully read: the next request on the same connection is intact."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/localize", body=b"{broken", headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 400 and response.getheader("Connection") is None
    response.read()
    sock = conn.sock
    for _ in range(3):
        conn.request("GET", "/health")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
    assert conn.sock is sock
    conn.close()


class _Broken:
    """A stand-in localizer whose localize raises: the server must answer 500 JSON and log it."""

    manifest: dict = {}
    num_images = 0

    def localize(self, *args, **kwargs):
        raise RuntimeError("boom")


def test_unexpected_error_is_500(caplog):
    server, thread = start(_Broken())
    try:
        with caplog.at_level(logging.ERROR, logger="vloc.serve.app"):
            status, doc = post(server.server_address[1], b"P5 4 4 255\n" + bytes(16), "image/png")
        assert status == 500 and "internal" in doc["error"] and "boom" not in doc["error"]
        assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)  # logged with traceback
    finally:
        stop(server, thread)
