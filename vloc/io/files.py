"""Atomic file writes: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def naming(path: Path | str) -> Iterator[None]:
    """Give an ``OSError`` raised inside without a file name (a failed ``write()`` on an open
    file has none) the name ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block succeeds and
    is removed when it fails. An ``OSError`` without a file name raised in the block (a full
    disk's failed write) is given ``path``'s."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with naming(path):
            yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO]:
    """A file opened on :func:`atomic_path`'s temporary path: written piece by piece, it replaces
    ``path`` when the block succeeds (after it is closed) and is removed when it fails."""
    with atomic_path(path) as tmp, naming(path), open(tmp, mode) as stream:
        yield stream


class JsonListStream:
    """``{**head, key: [item, ...]}`` as JSON, written an item at a time (one per line) so a long
    run's items are never all in memory; the file appears atomically when the stream closes."""

    def __init__(self, path: Path | str, head: dict, key: str):
        self._context = atomic_open(path)
        self._stream = self._context.__enter__()
        self._stream.write(json.dumps(head)[:-1] + (", " if head else "") + f"{json.dumps(key)}: [")
        self._first = True

    def add(self, item: dict) -> None:
        self._stream.write(("\n" if self._first else ",\n") + json.dumps(item))
        self._first = False

    def __enter__(self) -> "JsonListStream":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._stream.write("\n]}\n")
        self._context.__exit__(*exc)
