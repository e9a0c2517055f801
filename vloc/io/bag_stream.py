"""Sequential readers for recordings whose index is missing: a ROS 1 bag or an MCAP file cut short
(a crashed or killed recorder, a copy that stopped), which ``rosbags``' indexed readers refuse.

Both formats are written as a stream of records, so the complete records before the cut still
read: ROS 1 chunks (none, bz2 or lz4) of connection and message records; MCAP records through the
``mcap`` library's stream reader (chunks decompressed by it). A chunk cut in the middle is lost
with the messages in it. :func:`stream_messages` yields ``(topic, msgtype, raw, log time ns,
deserialize)`` and ends by raising :class:`TruncatedBagError`, which says where it stopped.
"""
from __future__ import annotations

import bz2
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

ROS1_MAGIC, MCAP_MAGIC = b"#ROSBAG V2.0\n", b"\x89MCAP0\r\n"
Message = tuple[str, str, bytes, int, Callable[[bytes, str], Any]]


class TruncatedBagError(ValueError):
    """A recording that ends before its last record. ``messages``: how many complete messages were
    read; ``offset``: the byte where the first incomplete record starts."""

    def __init__(self, path: Path, messages: int, offset: int, size: int, detail: str):
        super().__init__(f"{path}: truncated at byte {offset} of {size} ({detail}); read the {messages} complete "
                         "messages before it")
        self.path, self.messages, self.offset = path, messages, offset


def streamable(path: Path) -> list[Path]:
    """The files :func:`stream_messages` can read for ``path`` (a ROS 1 bag, an MCAP file, or a
    ROS 2 bag folder of MCAP files, with or without its metadata), or [] for other recordings."""
    files = sorted(path.glob("*.mcap")) if path.is_dir() else [path]
    return files if files and all(_magic(f).startswith((ROS1_MAGIC, MCAP_MAGIC)) for f in files) else []


def _magic(file: Path) -> bytes:
    with open(file, "rb") as stream:
        return stream.read(len(ROS1_MAGIC))


def stream_messages(path: Path, files: list[Path]) -> Iterator[Message]:
    """Every complete message of ``files`` (from :func:`streamable`), in file order; raises
    :class:`TruncatedBagError` at the first incomplete record (there always is one: these files
    were refused by the indexed reader)."""
    from rosbags.typesys import Stores, get_typestore

    count = 0
    for file in files:
        with open(file, "rb") as stream:
            if stream.read(len(ROS1_MAGIC)) == ROS1_MAGIC:
                store = get_typestore(Stores.ROS1_NOETIC)
                records = _ros1_messages(stream, store.deserialize_ros1)
            else:
                stream.seek(0)
                store = get_typestore(Stores.ROS2_HUMBLE)
                records = _mcap_messages(stream, store.deserialize_cdr)
            try:
                for message in records:
                    count += 1
                    yield message
            except _Cut as cut:
                raise TruncatedBagError(file if path.is_dir() else path, count, cut.offset,
                                        file.stat().st_size, cut.detail) from None
    raise TruncatedBagError(path, count, files[-1].stat().st_size, files[-1].stat().st_size,
                            "its index or summary is missing")


class _Cut(Exception):
    def __init__(self, offset: int, detail: str):
        self.offset, self.detail = offset, detail


def _read(stream: BinaryIO, size: int, offset: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) < size:
        raise _Cut(offset, f"inside a {what}")
    return data


def _fields(header: bytes) -> dict[str, bytes]:
    fields, at = {}, 0
    while at + 4 <= len(header):
        (size,) = struct.unpack_from("<I", header, at)
        name, _, value = header[at + 4: at + 4 + size].partition(b"=")
        fields[name.decode()] = value
        at += 4 + size
    return fields


def _ros1_records(stream: BinaryIO, base: int = 0) -> Iterator[tuple[dict[str, bytes], bytes, int]]:
    """``(header fields, data, offset)`` of each ROS 1 record until the stream ends."""
    while True:
        offset = base + stream.tell()
        prefix = stream.read(4)
        if not prefix:
            return
        if len(prefix) < 4:
            raise _Cut(offset, "inside a record's length")
        header = _read(stream, struct.unpack("<I", prefix)[0], offset, "record header")
        (size,) = struct.unpack("<I", _read(stream, 4, offset, "record"))
        yield _fields(header), _read(stream, size, offset, "record's data"), offset


def _ros1_messages(stream: BinaryIO, deserialize: Callable[[bytes, str], Any]) -> Iterator[Message]:
    import io

    topics: dict[int, tuple[str, str]] = {}
    for fields, data, offset in _ros1_records(stream, 0):
        if fields.get("op") != b"\x05":  # outside chunks: the bag header, index and chunk info records
            continue
        compression = fields["compression"].decode()
        if compression == "bz2":
            data = bz2.decompress(data)
        elif compression == "lz4":
            import lz4.frame

            data = lz4.frame.decompress(data)
        elif compression != "none":
            raise ValueError(f"ROS 1 chunk compression {compression!r} is not supported (none, bz2, lz4)")
        for inner, payload, _ in _ros1_records(io.BytesIO(data), offset):
            conn = struct.unpack("<I", inner["conn"])[0] if "conn" in inner else None
            if inner.get("op") == b"\x07":
                connection = _fields(payload)
                msgtype = connection["type"].decode()
                topics[conn] = (inner["topic"].decode(), msgtype.replace("/", "/msg/", 1))
            elif inner.get("op") == b"\x02" and conn in topics:
                sec, nsec = struct.unpack("<II", inner["time"])
                topic, msgtype = topics[conn]
                yield topic, msgtype, payload, sec * 1_000_000_000 + nsec, deserialize


def _mcap_messages(stream: BinaryIO, deserialize: Callable[[bytes, str], Any]) -> Iterator[Message]:
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message as McapMessage, Schema
    from mcap.stream_reader import StreamReader

    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    records = StreamReader(stream).records
    while True:
        offset = stream.tell()
        try:
            record = next(records)
        except StopIteration:
            return
        except (McapError, EOFError, ValueError) as exc:  # mcap's EndOfFile is an McapError
            raise _Cut(offset, f"inside a record: {type(exc).__name__}{' ' + str(exc) if str(exc) else ''}") from None
        if isinstance(record, Schema):
            schemas[record.id] = record.name
        elif isinstance(record, Channel):
            channels[record.id] = (record.topic, schemas.get(record.schema_id, ""))
        elif isinstance(record, McapMessage) and record.channel_id in channels:
            topic, msgtype = channels[record.channel_id]
            yield topic, msgtype, record.data, record.log_time, deserialize
