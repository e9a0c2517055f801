"""``.npy`` files written a block of rows at a time and read back memory-mapped.

:class:`NpyAppender` lets a writer append rows without holding the whole array (a map's
keypoints, descriptors, ...): it writes a fixed-size NPY 1.0 header with a placeholder row count,
appends raw rows, and on :meth:`NpyAppender.close` rewrites the header with the real count. The
file is a standard ``.npy`` that ``numpy.load(path, mmap_mode="r")`` opens in constant time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

_MAGIC = b"\x93NUMPY\x01\x00"
_HEADER_LEN = 128 - len(_MAGIC) - 2  # one fixed size: room for any 19-digit row count


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    text = repr(dict(descr=np.lib.format.dtype_to_descr(dtype), fortran_order=False, shape=shape))
    text = text.encode("latin1")
    if len(text) + 1 > _HEADER_LEN:
        raise ValueError(f"npy header too long for shape {shape} and dtype {dtype}")
    return _MAGIC + _HEADER_LEN.to_bytes(2, "little") + text.ljust(_HEADER_LEN - 1) + b"\n"


class NpyAppender:
    """Append ``(n, *row_shape)`` blocks of ``dtype`` to ``path``; a valid ``.npy`` after :meth:`close`."""

    def __init__(self, path: Path | str, dtype: np.dtype | type | str, row_shape: tuple[int, ...] = ()):
        self.path, self.dtype, self.row_shape = Path(path), np.dtype(dtype), tuple(row_shape)
        self.rows = 0
        self._file = open(self.path, "wb")
        self._file.write(_header(self.dtype, (0, *self.row_shape)))

    def append(self, block: np.ndarray) -> None:
        block = np.asarray(block)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {block.shape[1:]}, expected {self.row_shape}")
        self._file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += len(block)

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(_header(self.dtype, (self.rows, *self.row_shape)))
        self._file.close()

    def __enter__(self) -> "NpyAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_array(path: Path | str) -> np.ndarray:
    """Memory-map a ``.npy`` read-only (pages are read on first access and stay file-backed)."""
    return np.load(path, mmap_mode="r")
