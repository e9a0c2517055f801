"""Faults during a map build or extend (issue 24, item 5): a full disk, a read-only map or folder,
and another process writing the same map. Each ends with a clear error that names the path and
the problem (exit status 2, no traceback), leaves the previous map byte for byte as it was, and
the same command run again (space or permission back) resumes from the work directory.

The disk-full and read-only cases mount small tmpfs filesystems, which needs root: elsewhere they
are skipped with the reason. The scene is the rendered demo at 320x240, six map images, SIFT with
1,024 keypoints: a build takes about a second once the models are loaded, and most tests start
from copies of a work directory whose stages are complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pycolmap
import pytest

from vloc import config
from vloc.cli import main
from vloc.config import FeatureConf, get_preset
from vloc.mapping import build as build_module
from vloc.mapping.build import build_map
from vloc.mapping.extend import extend_map
from vloc.mapping.map_dir import load_map

ROOT = Path(__file__).resolve().parents[1]
PRESET = "faults-tiny"
TINY = get_preset("sift").with_overrides(name=PRESET, features=FeatureConf(max_keypoints=1024, upsample=False))
PAGE = os.sysconf("SC_PAGE_SIZE")
NO_SPACE = "No space left on device"
READ_ONLY = "Read-only file system"


@pytest.fixture(scope="module", autouse=True)
def tiny_preset():
    """The CLI knows the small preset by name (``--preset faults-tiny``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(config.PRESETS, PRESET, TINY)
        yield


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch and one OpenCV thread: these builds are tiny, and on a busy machine more threads
    only wait for each other (a build took 10x longer with two)."""
    import cv2
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(before[0])
    cv2.setNumThreads(before[1])


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from vloc.demo.scene import render_demo_scene

    scene = render_demo_scene(tmp_path_factory.mktemp("demo") / "scene", 320, 240)
    names = sorted(im.name for im in pycolmap.Reconstruction(str(scene / "ref_model")).images.values())
    for file, chosen in (("six.txt", names[:6]), ("four.txt", names[:4]), ("two.txt", names[4:6])):
        (scene / file).write_text("".join(f"{n}\n" for n in chosen))
    return scene


@pytest.fixture(scope="module")
def seeds(scene, tmp_path_factory):
    """Maps and work directories with every stage complete, copied by the tests:
    ``{ref,sfm}_map``/``_work`` (six images, from poses / SfM); ``ext_{ref,sfm}_base`` (four
    images), ``ext_{ref,sfm}_work`` (its extend by two more, complete) and ``ext_{ref,sfm}_done``
    (the result)."""
    root = tmp_path_factory.mktemp("seeds")
    images, ref = scene / "images", scene / "ref_model"
    build_map(images, root / "ref_map", TINY, reference=ref, image_list=scene / "six.txt", work=root / "ref_work")
    for mode in ("sfm", "ext_ref_base", "ext_sfm_base"):  # the same extraction stage: reused, not recomputed
        shutil.copytree(root / "ref_work" / "extract", root / f"{mode}_work" / "extract")
    build_map(images, root / "sfm_map", TINY, image_list=scene / "six.txt", work=root / "sfm_work")
    for mode in ("ref", "sfm"):
        build_map(images, root / f"ext_{mode}_base", TINY, reference=ref if mode == "ref" else None,
                  image_list=scene / "four.txt", work=root / f"ext_{mode}_base_work")
        shutil.copytree(root / f"ext_{mode}_base", root / f"ext_{mode}_done")
        extend_map(root / f"ext_{mode}_done", images, image_list=scene / "two.txt",
                   reference=ref if mode == "ref" else None, work=root / f"ext_{mode}_work")
    return root


class Mounts:
    """tmpfs and bind mounts made by one test, unmounted at its end; :meth:`leave_free` sets how
    many bytes a tmpfs still takes."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []

    def _run(self, *args: str) -> None:
        result = subprocess.run(["mount", *args], capture_output=True, text=True)
        if result.returncode:
            raise OSError(f"mount {' '.join(args)}: {result.stderr.strip()}")

    def tmpfs(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self._run("-t", "tmpfs", "-o", "size=256m,mode=755", "tmpfs", str(path))
        self.mounted.append(path)
        return path

    def read_only_bind(self, path: Path) -> None:
        """Make the directory ``path`` itself a read-only mount of itself."""
        self._run("--bind", str(path), str(path))
        self.mounted.append(path)
        self._run("-o", "remount,bind,ro", str(path))

    def leave_free(self, fs: Path, nbytes: int) -> None:
        st = os.statvfs(fs)
        self._run("-o", f"remount,size={(st.f_blocks - st.f_bfree) * st.f_frsize + nbytes}", str(fs))

    def grow(self, fs: Path) -> None:
        self._run("-o", "remount,size=256m", str(fs))

    def read_only(self, fs: Path) -> None:
        self._run("-o", "remount,ro", str(fs))

    def writable(self, fs: Path) -> None:
        self._run("-o", "remount,rw", str(fs))

    def unmount(self, path: Path) -> None:
        self.mounted.remove(path)
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def mounts(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("disk-full and read-only cases mount a small tmpfs, which needs root")
    m = Mounts()
    try:
        m.tmpfs(tmp_path / "probe-mount")
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    m.unmount(tmp_path / "probe-mount")
    yield m
    for path in reversed(list(m.mounted)):
        m.unmount(path)


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``directory``."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def pages(path: Path) -> int:
    """Pages a file (or every file under a directory) takes on a tmpfs."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(-(-p.stat().st_size // PAGE) for p in files)


def build_args(scene: Path, out: Path, mode: str, *extra: str) -> list[str]:
    ref = ["--reference", str(scene / "ref_model")] if mode == "ref" else []
    return ["map", "build", "--images", str(scene / "images"), "--image-list", str(scene / "six.txt"),
            "--out", str(out), "--preset", PRESET, *ref, *extra]


def extend_args(scene: Path, map_dir: Path, mode: str, *extra: str) -> list[str]:
    ref = ["--reference", str(scene / "ref_model")] if mode == "ref" else []
    return ["map", "extend", str(map_dir), "--images", str(scene / "images"), "--image-list",
            str(scene / "two.txt"), *ref, *extra]


def run_cli(args: list[str], caplog) -> tuple[int, str]:
    """Exit status and the error logged (the command must not raise: a traceback is no clear error)."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        status = main(args)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return status, "\n".join(errors)


def no_leftovers(folder: Path, name: str) -> None:
    """No temporary map, moved-aside previous map or lock beside the map ``folder/name``."""
    left = sorted(p.name for p in folder.glob(f".{name}.*"))
    assert not left, left


def assert_complete(out: Path, images: int) -> None:
    data = load_map(out)
    assert data.manifest.counts.images == images
    assert len(data.store) == images


# --- a full disk -------------------------------------------------------------------------------


def test_disk_full_during_extraction_resumes(scene, seeds, mounts, tmp_path, caplog):
    """OUT and its default work directory OUT.partial on a filesystem that fills after about
    three images' features (extraction is the same for SfM; the later tests cover both modes)."""
    mode = "ref"
    fs = mounts.tmpfs(tmp_path / "fs")
    out = fs / "map"
    features = sorted((seeds / "ref_work" / "extract" / "features").glob("*.npz"))
    mounts.leave_free(fs, PAGE * (4 + sum(pages(f) for f in features[:3])))  # locks and stage.json: 4 pages
    status, error = run_cli(build_args(scene, out, mode), caplog)
    assert status == 2
    partial = fs / "map.partial" / "extract" / "features"
    assert f"{partial}/" in error and NO_SPACE in error, error
    assert f"No map was written to {out}" in error and f"kept in {fs / 'map.partial'}" in error
    assert "run the same command again to resume" in error
    done = sorted(partial.glob("*.npz"))
    assert 1 <= len(done) < 6
    assert not list(partial.glob(".*")), "a half-written feature file was left"
    assert not out.exists()
    no_leftovers(fs, "map")
    mounts.grow(fs)
    status, error = run_cli(build_args(scene, out, mode), caplog)
    assert status == 0, error
    assert f"extract: {len(done)} of 6 images already extracted" in caplog.text
    assert_complete(out, load_map(seeds / f"{mode}_map").manifest.counts.images)
    assert not (fs / "map.partial").exists()
    no_leftovers(fs, "map")


# The parts of a map in the order they are written (features/ and images/ together).
MAP_PARTS = {"model": ["model"], "features": ["features", "images"], "points3D": ["points3D"], "global": ["global"],
             "manifest.json": ["manifest.json"]}


@pytest.mark.parametrize("mode,part", [("ref", "model"), ("ref", "features"), ("ref", "global"),
                                       ("ref", "manifest.json"), ("sfm", "features")])
def test_disk_full_while_writing_the_map_keeps_the_previous_one(mode, part, scene, seeds, mounts, tmp_path, caplog):
    fs = mounts.tmpfs(tmp_path / "fs")
    out, work = fs / "map", tmp_path / "work"
    shutil.copytree(seeds / f"{mode}_map", out)
    shutil.copytree(seeds / f"{mode}_work", work)
    before = snapshot(out)
    seed = seeds / f"{mode}_map"
    earlier = list(MAP_PARTS)[:list(MAP_PARTS).index(part)]
    written = sum(pages(seed / p) for e in earlier for p in MAP_PARTS[e])  # what fits: the parts before
    if part == "global":  # and of this one: descriptors, whitened rows, whitening; not the index (written last)
        written += sum(pages(f) for f in (seed / "global").iterdir() if f.name != "index.faiss")
    else:  # half
        written += pages(seed / part) // 2
    mounts.leave_free(fs, PAGE * (1 + written))  # + the lock beside OUT
    status, error = run_cli(build_args(scene, out, mode, "--overwrite", "--work", str(work)), caplog)
    assert status == 2
    assert f"/.map.writing-{os.getpid()}/{part}" in error and NO_SPACE in error, error
    assert f"The previous map {out} is unchanged" in error and f"kept in {work}" in error
    assert snapshot(out) == before
    no_leftovers(fs, "map")
    mounts.grow(fs)
    status, error = run_cli(build_args(scene, out, mode, "--overwrite", "--work", str(work)), caplog)
    assert status == 0, error
    assert "model: complete in" in caplog.text and "reused" in caplog.text
    assert_complete(out, load_map(seed).manifest.counts.images)
    assert snapshot(out) != before
    no_leftovers(fs, "map")


@pytest.mark.parametrize("mode,stage", [("ref", "database"), ("ref", "model"), ("sfm", "database"),
                                        ("sfm", "model")])
def test_disk_full_in_a_later_stage_resumes(mode, stage, scene, seeds, mounts, tmp_path, caplog):
    """The work directory on the full filesystem: the COLMAP database (SQLite) or the model
    (pycolmap writes it without reporting a failed write: it is read back) does not fit."""
    fs = mounts.tmpfs(tmp_path / "fs")
    work, out = fs / "work", tmp_path / "map"
    shutil.copytree(seeds / f"{mode}_work", work)
    later = ["database", "model"][["database", "model"].index(stage):]
    for name in later:
        shutil.rmtree(work / name)
    seed_output = seeds / f"{mode}_work" / stage / ("database.db" if stage == "database" else "reconstruction")
    mounts.leave_free(fs, PAGE * (2 + pages(seed_output) // 2))  # + the lock and stage.json
    status, error = run_cli(build_args(scene, out, mode, "--work", str(work)), caplog)
    assert status == 2
    assert f"{work}/" in error and NO_SPACE in error, error  # the stage's output, or the database the mapper opens
    assert f"No map was written to {out}" in error and f"kept in {work}" in error
    recorded = json.loads((work / stage / "stage.json").read_text())
    assert not recorded["complete"]
    assert not (work / stage / ("database.db" if stage == "database" else "reconstruction")).exists()
    assert not out.exists()
    mounts.grow(fs)
    status, error = run_cli(build_args(scene, out, mode, "--work", str(work)), caplog)
    assert status == 0, error
    previous = {"database": "matches", "model": "database"}[stage]
    assert f"{previous}: complete in {work / previous}, reused" in caplog.text
    assert_complete(out, load_map(seeds / f"{mode}_map").manifest.counts.images)


@pytest.mark.parametrize("mode", ["ref", "sfm"])
def test_disk_full_during_extend_keeps_the_map(mode, scene, seeds, mounts, tmp_path, caplog):
    fs = mounts.tmpfs(tmp_path / "fs")
    map_dir, work = fs / "map", tmp_path / "work"
    shutil.copytree(seeds / f"ext_{mode}_base", map_dir)
    shutil.copytree(seeds / f"ext_{mode}_work", work)
    before = snapshot(map_dir)
    mounts.leave_free(fs, PAGE * (1 + pages(seeds / f"ext_{mode}_done") // 2))
    status, error = run_cli(extend_args(scene, map_dir, mode, "--work", str(work)), caplog)
    assert status == 2
    assert f"/.map.writing-{os.getpid()}/" in error and NO_SPACE in error, error
    assert f"The map {map_dir} is unchanged" in error and f"kept in {work}" in error
    assert snapshot(map_dir) == before
    no_leftovers(fs, "map")
    mounts.grow(fs)
    status, error = run_cli(extend_args(scene, map_dir, mode, "--work", str(work)), caplog)
    assert status == 0, error
    assert f"matches: complete in {work / 'matches'}, reused" in caplog.text
    data = load_map(map_dir)
    assert data.manifest.counts == load_map(seeds / f"ext_{mode}_done").manifest.counts
    assert len(data.manifest.extensions) == 1
    no_leftovers(fs, "map")


# --- read-only ---------------------------------------------------------------------------------


def _seeded(command: str, scene: Path, seeds: Path, map_dir: Path, work: Path) -> tuple[Path, list[str]]:
    """A finished reference map (build) or map to extend, with its work directory, and the
    command line that rewrites it."""
    seed = "ref" if command == "build" else "ext_ref"
    shutil.copytree(seeds / (f"{seed}_map" if command == "build" else f"{seed}_base"), map_dir)
    shutil.copytree(seeds / f"{seed}_work", work)
    args = (build_args(scene, map_dir, "ref", "--overwrite", "--work", str(work)) if command == "build"
            else extend_args(scene, map_dir, "ref", "--work", str(work)))
    return map_dir, args


@pytest.mark.parametrize("command", ["build", "extend"])
def test_read_only_folder_is_refused_before_any_work(command, scene, seeds, mounts, tmp_path, caplog):
    """The folder holding the map is read-only: refused at once (no stage runs), the map
    unchanged; writable again, the same command completes."""
    fs = mounts.tmpfs(tmp_path / "fs")
    map_dir, args = _seeded(command, scene, seeds, fs / "map", tmp_path / "work")
    before = snapshot(map_dir)
    mounts.read_only(fs)
    status, error = run_cli(args, caplog)
    assert status == 2
    assert f"{fs}/.map.lock: {READ_ONLY}" in error, error
    assert f"{map_dir} is unchanged" in error and "make that filesystem writable" in error
    assert "extract:" not in caplog.text  # refused before any stage
    assert snapshot(map_dir) == before
    mounts.writable(fs)
    status, error = run_cli(args, caplog)
    assert status == 0, error
    assert "model: complete in" in caplog.text
    assert_complete(map_dir, 6)
    no_leftovers(fs, "map")


@pytest.mark.parametrize("command", ["build", "extend"])
def test_read_only_map_directory_is_refused(command, scene, seeds, mounts, tmp_path, caplog):
    """The map directory itself is a read-only mount (its folder is writable)."""
    map_dir, args = _seeded(command, scene, seeds, tmp_path / "map", tmp_path / "work")
    before = snapshot(map_dir)
    mounts.read_only_bind(map_dir)
    status, error = run_cli(args, caplog)
    assert status == 2
    assert f"{map_dir}: {READ_ONLY}" in error and f"{map_dir} is unchanged" in error, error
    assert "extract:" not in caplog.text
    assert snapshot(map_dir) == before
    no_leftovers(tmp_path, "map")
    mounts.unmount(map_dir)
    status, error = run_cli(args, caplog)
    assert status == 0, error
    assert_complete(map_dir, 6)


def test_filesystem_turning_read_only_while_the_map_is_written(scene, seeds, mounts, tmp_path, caplog):
    """The map's filesystem goes read-only after the stages, as the map is written (a disk
    error remounting it, say): a clear error, and the rerun resumes once it is writable."""
    fs = mounts.tmpfs(tmp_path / "fs")
    out, work = fs / "map", tmp_path / "work"
    shutil.copytree(seeds / "ref_work", work)
    real = build_module.write_map

    def remount_first(*args, **kwargs):
        mounts.read_only(fs)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build_module, "write_map", remount_first)
        status, error = run_cli(build_args(scene, out, "ref", "--work", str(work)), caplog)
    assert status == 2
    assert f"{fs}/.map.writing-{os.getpid()}" in error and READ_ONLY in error, error
    assert f"No map was written to {out}" in error and f"kept in {work}" in error
    assert not out.exists()
    mounts.writable(fs)
    status, error = run_cli(build_args(scene, out, "ref", "--work", str(work)), caplog)
    assert status == 0, error
    assert "model: complete in" in caplog.text
    assert_complete(out, 6)
    no_leftovers(fs, "map")  # the temporary map the read-only filesystem kept is gone too


# --- two writers -------------------------------------------------------------------------------

PAUSED_BUILD = """
import json, sys, time
from pathlib import Path
from vloc.config import Preset
from vloc.mapping import build
from vloc.mapping.build import build_map

images, ref, image_list, out, work, preset, ready, go = sys.argv[1:]
real = build.write_map

def paused(*args, **kwargs):
    Path(ready).touch()
    deadline = time.monotonic() + 120
    while not Path(go).exists():
        if time.monotonic() > deadline:
            sys.exit("never told to go on")
        time.sleep(0.05)
    return real(*args, **kwargs)

build.write_map = paused
build_map(Path(images), Path(out), Preset.from_dict(json.loads(preset)), reference=Path(ref),
          image_list=Path(image_list), overwrite=True, work=Path(work))
"""


def test_a_second_writer_is_refused_and_the_first_completes(scene, seeds, tmp_path, caplog):
    """A build (another process, paused before it writes the map) holds the map and its work
    directory: another build of the same map, an extend of it, and a build of another map with the
    same work directory are refused naming its pid; the map is untouched until the first completes."""
    out, work = tmp_path / "map", tmp_path / "work"
    shutil.copytree(seeds / "ref_map", out)
    shutil.copytree(seeds / "ref_work", work)
    before = snapshot(out)
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    log = tmp_path / "first.log"
    with open(log, "w") as stderr:
        first = subprocess.Popen(
            [sys.executable, "-c", PAUSED_BUILD, str(scene / "images"), str(scene / "ref_model"),
             str(scene / "six.txt"), str(out), str(work), json.dumps(TINY.to_dict()), str(ready), str(go)],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the first build never reached the map write"
            time.sleep(0.05)
        attempts = {
            "same map": build_args(scene, out, "ref", "--overwrite", "--work", str(tmp_path / "work2")),
            "extend": extend_args(scene, out, "ref", "--work", str(tmp_path / "work3")),
            "same work": build_args(scene, tmp_path / "other", "ref", "--work", str(work)),
        }
        for what, args in attempts.items():
            status, error = run_cli(args, caplog)
            assert status == 2, what
            assert f"another process is writing it (pid {first.pid} " in error, (what, error)
            assert str(work if what == "same work" else out) in error, (what, error)
            assert "Nothing was changed" in error
        assert snapshot(out) == before
        assert not (tmp_path / "other").exists()
        go.touch()
        assert first.wait(timeout=120) == 0, log.read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert_complete(out, 6)
    assert snapshot(out) != before  # the first build replaced it
    no_leftovers(tmp_path, "map")
    assert not (work / ".lock").exists()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from vloc.mapping.faults import lock_file, exclusive

with exclusive(lock_file(Path(sys.argv[1])), sys.argv[1]):
    Path(sys.argv[2]).touch()
    time.sleep(600)
"""


def test_a_killed_writer_leaves_no_lock(scene, seeds, tmp_path, caplog):
    """The lock goes with its process, however it ends (here SIGKILL: no handler runs)."""
    out, work, ready = tmp_path / "map", tmp_path / "work", tmp_path / "ready"
    shutil.copytree(seeds / "ref_work", work)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), str(ready)],
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        status, error = run_cli(build_args(scene, out, "ref", "--work", str(work)), caplog)
        assert status == 2 and f"pid {holder.pid} " in error, error
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()
    status, error = run_cli(build_args(scene, out, "ref", "--work", str(work)), caplog)
    assert status == 0, error
    assert_complete(out, 6)
    no_leftovers(tmp_path, "map")
