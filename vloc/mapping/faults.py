"""Faults during a map build or extend: a full or read-only filesystem, another process writing
the same map.

- **One writer per map.** ``vloc map build`` and ``vloc map extend`` hold an exclusive lock
  (``fcntl.flock``) on ``.NAME.lock`` beside the map directory ``NAME`` and on ``WORK/.lock`` in
  their work directory for as long as they run. A second build or extend of the same map, or a
  build with the same work directory, stops at once with :class:`MapBusyError` naming the
  holder's pid; nothing is changed. The kernel releases the lock when its process ends, however it
  ends, so a killed build never leaves a stale lock. The file holds ``pid N on HOST since TIME:
  COMMAND`` and is removed when the lock is released.
- **Refused writes.** Every write of a build goes to a temporary name renamed into place complete
  (the work directory's stage files, the map beside ``OUT``), so a refused write leaves the
  previous map as it was and the work directory resumable. :func:`guarded` turns the filesystem's
  refusal (``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EACCES``, ...) into :class:`MapWriteError`, whose
  message names the path, the problem, that the map is unchanged, and that the same command
  resumes.
- **Native writers.** pycolmap and FAISS report a refused write as a ``RuntimeError`` without
  errno (:func:`native_write` probes the directory to find the cause), and pycolmap's
  ``Reconstruction.write_binary`` reports none at all: a full disk leaves a truncated model. Models
  are therefore written with :func:`write_model`, which reads them back.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from vloc.io.files import naming

if TYPE_CHECKING:
    import pycolmap

logger = logging.getLogger(__name__)

__all__ = ["FS_ERRNOS", "MapBusyError", "MapWriteError", "exclusive", "fault_errno", "guarded", "lock_file",
           "map_lock", "native_write", "probe", "work_lock", "write_model"]

# What a filesystem answers when it will not take a write (and EIO: a disk that failed one).
FS_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
PROBE_BYTES = 64 * 1024
WORK_LOCK = ".lock"
_NATIVE = ((errno.ENOSPC, ("no space left on device", "disk is full", "disk quota exceeded")),
           (errno.EROFS, ("read-only file system", "readonly database")),
           (errno.EACCES, ("permission denied",)))


class MapBusyError(RuntimeError):
    """Another process holds the lock of the map (or work directory) this one would write."""

    def __init__(self, message: str, path: Path, pid: int | None):
        super().__init__(message)
        self.path, self.pid = path, pid


class MapWriteError(RuntimeError):
    """A build or extend stopped because the filesystem refused a write (full, read-only, no
    permission); the map is unchanged and the work directory resumable."""

    def __init__(self, message: str, path: str, code: int):
        super().__init__(message)
        self.path, self.errno = path, code


def lock_file(target: Path) -> Path:
    """The lock file of the map directory ``target``: ``.NAME.lock`` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created, and removed on release); raise
    :class:`MapBusyError` naming the holder when another process has it. ``what``: the thing the
    lock protects, for the message."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        # Read-only: the descriptor held for the whole build keeps no file open for writing
        # (which would, e.g., keep its filesystem from being remounted read-only).
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _holder(path)
            pid = re.match(r"pid (\d+)", holder)
            raise MapBusyError(
                f"{what}: another process is writing it ({holder or 'it has not written its pid yet'}; lock "
                f"{path}). Nothing was changed: wait for that process to end, or stop it, then run this command "
                "again.", Path(what), int(pid.group(1)) if pid else None) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            locked = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            locked = False
        if locked:
            break
        os.close(fd)  # the previous holder removed the file while we waited for it: lock the new one
    try:
        _write_holder(path)
        yield
    finally:
        try:
            path.unlink(missing_ok=True)  # before the lock goes: a waiting opener then retries (above)
        except OSError as exc:
            logger.debug("%s: lock file not removed (%s)", path, exc)
        os.close(fd)


def _write_holder(path: Path) -> None:
    text = (f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: "
            f"{' '.join(sys.argv)}\n")
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        with naming(path):
            os.write(fd, text.encode())
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


@contextmanager
def map_lock(target: Path) -> Iterator[None]:
    """Hold the lock of the map directory ``target`` (see the module docstring), and refuse at
    once a ``target`` that cannot be replaced: on a read-only filesystem, or a mount point."""
    target = Path(target)
    with exclusive(lock_file(target), str(target)):
        if target.exists():
            if os.statvfs(target).f_flag & os.ST_RDONLY:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))
            if os.path.ismount(target):
                raise ValueError(f"{target}: a mount point; vloc replaces a map by renaming its directory, so a map "
                                 "cannot be a mount point: write it into a folder inside it")
        yield


@contextmanager
def work_lock(work: Path) -> Iterator[None]:
    """Create the work directory ``work`` and hold its lock (``WORK/.lock``)."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    with exclusive(work / WORK_LOCK, f"{work} (work directory)"):
        yield


def probe(directory: Path) -> OSError | None:
    """Write ``PROBE_BYTES`` into a new file in ``directory`` (or its nearest existing parent) and
    remove it; the ``OSError`` of :data:`FS_ERRNOS` the filesystem answers with, or None when it
    took the write."""
    d = Path(directory)
    while not d.is_dir() and d != d.parent:
        d = d.parent
    path = d / f".vloc-probe-{os.getpid()}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return exc if exc.errno in FS_ERRNOS else None
    try:
        left = memoryview(bytes(PROBE_BYTES))
        while len(left):
            left = left[os.write(fd, left):]
        os.fsync(fd)
    except OSError as exc:
        return exc if exc.errno in FS_ERRNOS else None
    finally:
        os.close(fd)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            logger.debug("%s: probe file not removed (%s)", path, exc)
    return None


@contextmanager
def native_write(path: Path) -> Iterator[None]:
    """Around a write by pycolmap or FAISS to ``path``: their ``RuntimeError`` becomes the
    filesystem's ``OSError`` naming ``path`` when a probe of its directory shows the filesystem
    refusing writes (else it propagates as it is)."""
    path = Path(path)
    try:
        yield
    except RuntimeError as exc:
        fault = probe(path.parent)
        if fault is None:
            raise
        raise OSError(fault.errno, f"{fault.strerror} ({exc})", str(path)) from exc


def write_model(reconstruction: "pycolmap.Reconstruction", directory: Path) -> None:
    """``reconstruction.write_binary`` into the existing ``directory``, checked by reading it
    back: pycolmap reports no failed write (a full disk leaves a truncated file), and a truncated
    model must never be taken for a written one. Raises ``OSError`` naming ``directory``."""
    import pycolmap

    directory = Path(directory)
    with native_write(directory / "model.bin"):
        reconstruction.write_binary(str(directory))
    try:
        back = pycolmap.Reconstruction(str(directory))
        problem = _model_difference(reconstruction, back)
    except (RuntimeError, ValueError, MemoryError, IndexError, OverflowError) as exc:
        problem = f"unreadable: {type(exc).__name__}: {exc}"
    if problem is None:
        return
    fault = probe(directory)
    code = fault.errno if fault is not None else errno.EIO
    raise OSError(code, f"{os.strerror(code)} (the model written there reads back wrong: {problem})", str(directory))


def _model_difference(a: "pycolmap.Reconstruction", b: "pycolmap.Reconstruction") -> str | None:
    # (pycolmap writes the registered frames and images only: a mapper's model in the making holds
    # unregistered ones too)
    for what in ("num_cameras", "num_rigs", "num_reg_frames", "num_reg_images", "num_points3D",
                 "compute_num_observations"):
        x, y = getattr(a, what)(), getattr(b, what)()
        if x != y:
            return f"{what} {x} written, {y} read"
    x = sum(im.num_points2D() for im in a.images.values() if im.has_pose)
    y = sum(im.num_points2D() for im in b.images.values() if im.has_pose)
    return None if x == y else f"{x} points2D written, {y} read"


def fault_errno(exc: BaseException) -> int | None:
    """The errno of :data:`FS_ERRNOS` that ``exc`` reports: an ``OSError``'s own, or one named in
    the message of a native library's ``RuntimeError`` (SQLite's "database or disk is full")."""
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in FS_ERRNOS else None
    if isinstance(exc, RuntimeError) and not isinstance(exc, (MapBusyError, MapWriteError)):
        text = str(exc).lower()
        for code, phrases in _NATIVE:
            if any(p in text for p in phrases):
                return code
    return None


def _free(path: Path) -> str:
    d = Path(path)
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        st = os.statvfs(d)
    except OSError:
        return "unknown"
    free = st.f_bavail * st.f_frsize
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return f"{free:.1f} TiB"


@contextmanager
def guarded(action: str, target: Path, work: Path, existed: bool) -> Iterator[None]:
    """Around a whole build or extend of the map ``target`` with the work directory ``work``:
    a refused write (:func:`fault_errno`) becomes :class:`MapWriteError` with a message that names
    the path and the problem, says what became of the map (``existed``: there was one before) and
    that the same command resumes from ``work``."""
    target, work = Path(target), Path(work)
    try:
        yield
    except (OSError, RuntimeError) as exc:
        code = fault_errno(exc)
        if code is None:
            raise
        path = getattr(exc, "filename", None) or str(work)
        problem = (f"{os.strerror(code)} ({_free(Path(path))} free there now)"
                   if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else os.strerror(code))
        if action.endswith("extend"):
            state = f"The map {target} is unchanged."
        elif existed:
            state = f"The previous map {target} is unchanged."
        else:
            state = f"No map was written to {target}."
        remedy = {errno.ENOSPC: "free space there", errno.EDQUOT: "free space there (a disk quota)",
                  errno.EFBIG: "free space there", errno.EROFS: "make that filesystem writable",
                  errno.EIO: "check that disk"}.get(code, "fix that path's permissions for this user")
        kept = (f"The finished stages are kept in {work}" if any(work.glob("*/stage.json"))
                else "Nothing was computed yet")
        logger.debug("%s %s stopped", action, target, exc_info=True)
        raise MapWriteError(f"vloc {action} {target} stopped: {path}: {problem}. {state} {kept}; {remedy}, then run "
                            "the same command again to resume.", path, code) from exc
