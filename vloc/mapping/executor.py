"""Where a build's per-item work runs: in this process, in N local processes, or as Ray tasks.

Every executor runs the same task functions (module-level, picklable, e.g.
:func:`vloc.mapping.extract.extract_chunk`) on the same task descriptions, and each task writes
its own output files into the work directory; results are therefore the same whichever
executor ran them. With Ray on a cluster, the images and the work directory must be at the same
path on every node (a shared filesystem), as they are for the driver.

Threads: a machine with C cores and N worker processes gives each worker max(1, C // N) torch
and OpenCV threads, so the processes do not oversubscribe the cores.

Device: an executor also says where the tasks' torch models run (``device``, a resolved
:func:`vloc.device.resolve_device` name such as ``cpu`` or ``cuda:0``); the stages put it into
their tasks. Ray tasks run on CPUs.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, Protocol

logger = logging.getLogger(__name__)

Task = Callable[[Any], Any]


class Executor(Protocol):
    """Runs ``fn`` on each item; yields results as they finish (in any order)."""

    workers: int
    device: str

    def map(self, fn: Task, items: Iterable[Any]) -> Iterator[Any]: ...

    def close(self) -> None: ...


def set_threads(threads: int) -> None:
    """Limit this process's torch, OpenCV and OpenMP threads."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


class SerialExecutor:
    """In this process, one item at a time (the default: no start-up cost)."""

    workers = 1

    def __init__(self, device: str = "cpu"):
        self.device = device

    def map(self, fn: Task, items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            yield fn(item)

    def close(self) -> None:
        pass


class ProcessExecutor:
    """``workers`` local processes (spawned: no fork of a process that already runs torch threads)."""

    def __init__(self, workers: int, device: str = "cpu"):
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.workers, self.device = workers, device
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=set_threads, initargs=(threads_per_worker(workers),))

    def map(self, fn: Task, items: Iterable[Any]) -> Iterator[Any]:
        yield from _bounded(lambda item: self._pool.submit(fn, item), items, 4 * self.workers,
                            lambda pending: wait(pending, return_when=FIRST_COMPLETED),
                            lambda future: future.result())

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class RayExecutor:
    """Ray tasks of one CPU each, on the cluster at ``address`` or on a local instance started
    with ``num_cpus`` CPUs (all of this machine's by default). Needs ``pip install vloc[ray]``."""

    device = "cpu"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise RuntimeError("--ray needs Ray: pip install 'vloc[ray]'") from None
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        threads = 1  # one CPU per task: Ray schedules as many tasks as there are CPUs
        self._remote = ray.remote(num_cpus=1)(_with_threads).options(max_retries=1)
        self._threads = threads
        logger.info("Ray: %d CPUs (%s)", self.workers, address or "local instance")

    def map(self, fn: Task, items: Iterable[Any]) -> Iterator[Any]:
        ray = self._ray

        def settle(pending):
            done, rest = ray.wait(list(pending), num_returns=1)
            return set(done), set(rest)

        yield from _bounded(lambda item: self._remote.remote(fn, item, self._threads), items, 2 * self.workers,
                            settle, ray.get)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def _with_threads(fn: Task, item: Any, threads: int) -> Any:
    set_threads(threads)
    return fn(item)


def _bounded(submit, items, limit: int, settle, result) -> Iterator[Any]:
    """Keep at most ``limit`` tasks in flight (a million-image task list is never all queued)."""
    pending: set = set()
    for item in items:
        pending.add(submit(item))
        if len(pending) >= limit:
            done, pending = settle(pending)
            for handle in done:
                yield result(handle)
    while pending:
        done, pending = settle(pending)
        for handle in done:
            yield result(handle)


def make_executor(workers: int = 1, ray: str | bool | None = None, device: str = "cpu") -> Executor:
    """``ray``: None/False for local work; True (a local Ray instance with ``workers`` CPUs when
    ``workers`` > 1) or a cluster address. ``device``: where local tasks run their models."""
    if ray:
        if device != "cpu":
            raise ValueError(f"--ray runs tasks on CPUs; --device {device} is for local builds")
        return RayExecutor(address=ray if isinstance(ray, str) else None,
                           num_cpus=workers if workers > 1 and not isinstance(ray, str) else None)
    return SerialExecutor(device) if workers == 1 else ProcessExecutor(workers, device)
