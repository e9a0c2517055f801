"""Shared fixtures. Real data comes from ``$VLOC_DATA`` (default ``../shared/data``): missing data
fails under CI (``CI`` set) and skips elsewhere."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from vloc.config import get_preset
from vloc.io.datasets import PreparedSet, open_prepared

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VLOC_DATA", ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"test data missing under CI: {path} (set VLOC_DATA)")
        pytest.skip(f"test data not found: {path} (set VLOC_DATA)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _require(DATA)


def prepared(name: str) -> PreparedSet:
    return open_prepared(_require(DATA / "prepared" / name))


@pytest.fixture(scope="session")
def kitti() -> PreparedSet:
    return prepared("kitti")


@pytest.fixture(scope="session")
def virtual_gallery() -> PreparedSet:
    return prepared("virtual_gallery")


def _build(ds: PreparedSet, out: Path) -> Path:
    from vloc.mapping.build import build_map

    build_map(ds.images, out, get_preset("sift"), reference=ds.ref_model)
    return out


@pytest.fixture(scope="session")
def kitti_map(kitti, tmp_path_factory) -> Path:
    return _build(kitti, tmp_path_factory.mktemp("maps") / "kitti")


@pytest.fixture(scope="session")
def vg_map(virtual_gallery, tmp_path_factory) -> Path:
    return _build(virtual_gallery, tmp_path_factory.mktemp("maps") / "virtual_gallery")


@pytest.fixture
def serve():
    """``serve(maps, **ServeConf fields)`` -> the port of a service run in a thread (stopped after the test)."""
    import threading

    from vloc.serve.app import ServeConf, Service
    from vloc.serve.server import ThreadedServer

    servers = []

    def start(maps: dict, **conf) -> int:
        server = ThreadedServer(Service(maps, ServeConf(**conf)), port=0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server.server_address[1]

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="session")
def seven_small(data_dir, tmp_path_factory) -> tuple[PreparedSet, list[str], Path]:
    """7scenes frames 0, 4, ..., 120 (31 images) and a ``sift`` map of them at their known poses
    (about 15 s): ``(the set, the map's image names, the map)``; its queries 10, 30, ..., 110 lie among them."""
    from vloc.mapping.build import build_map

    ds = prepared("7scenes")
    work = tmp_path_factory.mktemp("seven_small")
    names = [f"frame-{i:06d}.color.jpg" for i in range(0, 121, 4)]
    (work / "map_images.txt").write_text("".join(n + "\n" for n in names))
    build_map(ds.images, work / "map", get_preset("sift"), reference=ds.ref_model, image_list=work / "map_images.txt")
    return ds, names, work / "map"
