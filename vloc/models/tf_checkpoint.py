"""Read TensorFlow checkpoints (the V2 "tensor bundle" format) without TensorFlow.

A checkpoint ``PREFIX`` is ``PREFIX.index`` plus ``PREFIX.data-SSSSS-of-NNNNN`` shards. The index is
a LevelDB-style table (sorted key/value blocks, an index block, a 48-byte footer ending in a magic
number); TensorFlow writes its blocks uncompressed. The value under the empty key is a
``BundleHeaderProto`` (number of shards, endianness); every other key is a tensor name whose value is
a ``BundleEntryProto``: dtype, shape, shard, byte offset and size of the raw little-endian tensor data.
Only the few protobuf fields needed are parsed. TF1 ``Saver`` checkpoints and TF2 object-based
checkpoints (SavedModel ``variables/variables``) share this format; only the key naming differs.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER = 5  # compression type byte + crc32c
# tensorflow DataType enum -> numpy dtype (the numeric ones a model holds)
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
DT_BFLOAT16 = 14
# torch BatchNorm state name -> the TF-Slim / Keras batch-norm variable name
BN_NAMES = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_variance"))


class CheckpointError(ValueError):
    """A file is not a readable TensorFlow V2 checkpoint; the message names it."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a serialized protobuf message: ints for varint/fixed, bytes for length-delimited."""
    fields, pos = [], 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        fields.append((number, value))
    return fields


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int  # tensorflow DataType enum
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    sliced: bool  # partitioned variable (stored as slices): not supported


def _entry(name: str, value: bytes) -> TensorEntry:
    dtype, shape, shard, offset, size, sliced = 0, [], 0, 0, 0, False
    for number, v in _proto_fields(value):
        if number == 1:
            dtype = v
        elif number == 2:  # TensorShapeProto: repeated Dim dim = 2 {int64 size = 1}
            for n, dim in _proto_fields(v):
                if n == 2:
                    shape.append(next((d for k, d in _proto_fields(dim) if k == 1), 0))
        elif number == 3:
            shard = v
        elif number == 4:
            offset = v
        elif number == 5:
            size = v
        elif number == 7:
            sliced = True
    # int64 dims come back as unsigned varints; -1 (unknown) would be huge
    shape = [d - (1 << 64) if d >= 1 << 63 else d for d in shape]
    return TensorEntry(name, dtype, tuple(shape), shard, offset, size, sliced)


def _block_entries(data: bytes, where: str) -> list[tuple[bytes, bytes]]:
    """Key/value pairs of one table block (prefix-compressed keys, restart array at the end)."""
    if len(data) < 4:
        raise CheckpointError(f"{where}: truncated table block")
    num_restarts = struct.unpack_from("<I", data, len(data) - 4)[0]
    end = len(data) - 4 - 4 * num_restarts
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(data, pos)
        unshared, pos = _varint(data, pos)
        value_len, pos = _varint(data, pos)
        key = key[:shared] + data[pos:pos + unshared]
        pos += unshared
        entries.append((key, data[pos:pos + value_len]))
        pos += value_len
    return entries


def _read_block(raw: bytes, handle: bytes, where: str) -> list[tuple[bytes, bytes]]:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + BLOCK_TRAILER > len(raw):
        raise CheckpointError(f"{where}: block beyond the end of the file")
    compression = raw[offset + size]
    if compression != 0:
        raise CheckpointError(f"{where}: compressed table block (type {compression}); TensorFlow writes "
                              "checkpoints uncompressed, this file was written by something else")
    return _block_entries(raw[offset:offset + size], where)


def checkpoint_prefix(path: str | Path) -> Path:
    """Checkpoint prefix for a SavedModel directory, its ``variables/`` directory, a prefix or an ``.index`` file."""
    path = Path(path)
    candidates = [path / "variables" / "variables", path / "variables", path.with_suffix("")
                  if path.suffix == ".index" else path]
    if path.is_dir():  # a TF1 training directory: its ``checkpoint`` state file names the latest
        state = path / "checkpoint"
        if state.is_file():
            for line in state.read_text().splitlines():
                if line.startswith("model_checkpoint_path:"):
                    candidates.append(path / line.split(":", 1)[1].strip().strip('"'))
        candidates += [p.with_suffix("") for p in sorted(path.glob("*.index"))][:1]
    for prefix in candidates:
        if prefix.with_name(prefix.name + ".index").is_file():
            return prefix
    raise FileNotFoundError(f"{path}: no TensorFlow checkpoint here (looked for {path}.index, "
                            f"{path}/variables.index, {path}/variables/variables.index and {path}/*.index)")


class TFCheckpoint:
    """Tensors of a TF V2 checkpoint by name, read lazily with numpy."""

    def __init__(self, path: str | Path):
        self.prefix = checkpoint_prefix(path)
        index = self.prefix.with_name(self.prefix.name + ".index")
        where = str(index)
        raw = index.read_bytes()
        if len(raw) < FOOTER_SIZE or struct.unpack_from("<Q", raw, len(raw) - 8)[0] != TABLE_MAGIC:
            raise CheckpointError(f"{where}: not a TensorFlow checkpoint index (bad table magic)")
        footer = raw[-FOOTER_SIZE:]
        _, pos = _varint(footer, _varint(footer, 0)[1])  # skip the metaindex handle
        index_handle = footer[pos:]
        self.entries: dict[str, TensorEntry] = {}
        self.num_shards = 1
        for _, data_handle in _read_block(raw, index_handle, where):
            for key, value in _read_block(raw, data_handle, where):
                if key == b"":
                    header = dict(_proto_fields(value))
                    self.num_shards = int(header.get(1, 1))
                    if header.get(2, 0) != 0:
                        raise CheckpointError(f"{where}: big-endian checkpoint not supported")
                else:
                    name = key.decode("utf-8")
                    self.entries[name] = _entry(name, value)

    def keys(self) -> list[str]:
        return sorted(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a numpy array (bfloat16 is widened to float32)."""
        try:
            e = self.entries[name]
        except KeyError:
            raise KeyError(f"{self.prefix}: no tensor {name!r}") from None
        if e.sliced:
            raise CheckpointError(f"{self.prefix}: {name!r} is a partitioned variable; not supported")
        data_file = self.prefix.with_name(f"{self.prefix.name}.data-{e.shard:05d}-of-{self.num_shards:05d}")
        if not data_file.is_file():
            raise FileNotFoundError(f"{data_file}: checkpoint data shard missing (needed for {name!r})")
        with open(data_file, "rb") as f:
            f.seek(e.offset)
            buf = f.read(e.size)
        if len(buf) != e.size:
            raise CheckpointError(f"{data_file}: truncated (tensor {name!r} wants {e.size} bytes at {e.offset})")
        if e.dtype == DT_BFLOAT16:
            bits = np.frombuffer(buf, "<u2").astype(np.uint32) << 16
            return bits.view(np.float32).reshape(e.shape)
        if e.dtype not in DTYPES:
            raise CheckpointError(f"{self.prefix}: tensor {name!r} has TensorFlow dtype {e.dtype}, not a numeric one")
        array = np.frombuffer(buf, np.dtype(DTYPES[e.dtype]).newbyteorder("<"))
        expected = int(np.prod(e.shape)) if e.shape else 1
        if array.size != expected:
            raise CheckpointError(f"{self.prefix}: tensor {name!r} holds {array.size} values, shape {e.shape}")
        return array.reshape(e.shape).astype(DTYPES[e.dtype])
