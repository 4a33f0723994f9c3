"""The byte format of ``snapshot.bin``, a node's latest Raft snapshot.

Encoding and decoding, no I/O: :mod:`hafleet_agent.wal` (``DiskStorage``) writes, replaces and
reads the file (its docstring: how). Integers are little-endian; the version is the log's
(:data:`hafleet_agent.walformat.FORMAT_VERSION`)::

    magic "HAFLSNAP" | version u32 | crc u32 (CRC-32 of body) | body length u64 | body
    body: index u64 | term u64
          | voter count u32 | per voter: length u16, utf-8
          | learner count u32 | per learner: length u16, utf-8
          | data length u64 | data

A file with a bad magic, a bad CRC, a wrong length or a malformed body raises
:class:`CorruptSnapshotError`, never decodes to something else.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from .raft.types import ConfState, Snapshot, SnapshotMeta
from .walformat import FORMAT_VERSION, U16, U32, U64, StorageError, check_u64, encode_name

__all__ = ["CorruptSnapshotError", "decode_snapshot", "encode_snapshot"]

SNAP_MAGIC = b"HAFLSNAP"
_SNAP_HEADER = struct.Struct("<8sIIQ")  # magic, version, crc32(body), body length
_SNAP_META = struct.Struct("<QQ")  # index, term


class CorruptSnapshotError(StorageError):
    """The snapshot file exists but is damaged; it is refused, never silently ignored."""


def encode_snapshot(snap: Snapshot) -> bytes:
    meta = snap.meta
    check_u64("snapshot index", meta.index)
    check_u64("snapshot term", meta.term)
    parts = [_SNAP_META.pack(meta.index, meta.term)]
    for what, names in (("voter", meta.conf_state.voters), ("learner", meta.conf_state.learners)):
        parts.append(U32.pack(len(names)))
        parts.extend(encode_name(f"snapshot {what}", n) for n in names)
    data = bytes(snap.data)
    parts.append(U64.pack(len(data)))
    parts.append(data)
    body = b"".join(parts)
    return _SNAP_HEADER.pack(SNAP_MAGIC, FORMAT_VERSION, zlib.crc32(body), len(body)) + body


class _SnapReader:
    def __init__(self, body: bytes, path: Path) -> None:
        self.body = body
        self.pos = 0
        self.path = path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.body):
            raise CorruptSnapshotError(f"{self.path}: malformed snapshot body (truncated field)")
        out = self.body[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct) -> tuple[int, ...]:
        return st.unpack(self.take(st.size))

    def names(self) -> tuple[str, ...]:
        (count,) = self.unpack(U32)
        out = []
        for _ in range(count):
            (n,) = self.unpack(U16)
            try:
                out.append(self.take(n).decode())
            except UnicodeDecodeError:
                raise CorruptSnapshotError(
                    f"{self.path}: malformed snapshot body (node id is not utf-8)"
                ) from None
        return tuple(out)


def decode_snapshot(raw: bytes, path: Path) -> Snapshot:
    if len(raw) < _SNAP_HEADER.size:
        raise CorruptSnapshotError(
            f"{path}: snapshot file is truncated ({len(raw)} bytes, the header alone needs "
            f"{_SNAP_HEADER.size})"
        )
    magic, version, crc, length = _SNAP_HEADER.unpack_from(raw)
    if magic != SNAP_MAGIC:
        raise CorruptSnapshotError(f"{path}: not a hafleet snapshot (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise StorageError(
            f"{path}: unsupported snapshot format version {version} (this agent reads "
            f"version {FORMAT_VERSION})"
        )
    body = raw[_SNAP_HEADER.size :]
    if len(body) != length:
        raise CorruptSnapshotError(
            f"{path}: snapshot file is truncated or has trailing garbage: the header says "
            f"{length} body bytes, the file has {len(body)}"
        )
    if zlib.crc32(body) != crc:
        raise CorruptSnapshotError(f"{path}: snapshot crc mismatch (the file is corrupt)")
    r = _SnapReader(body, path)
    index, term = r.unpack(_SNAP_META)
    voters = r.names()
    learners = r.names()
    (n,) = r.unpack(U64)
    data = r.take(n)
    if r.pos != len(body):
        raise CorruptSnapshotError(f"{path}: malformed snapshot body (trailing bytes)")
    return Snapshot(SnapshotMeta(index, term, ConfState(voters, learners)), data)
