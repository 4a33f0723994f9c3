"""The byte format of a backup: what ``GET /v1/snapshot`` answers and ``hafleet-agent
snapshot save`` writes to a file (docs/operations.md). Encoding and decoding, no I/O.

Integers are little-endian; strings are a u16 length and UTF-8 bytes::

    magic    8 bytes  "HAFLBKUP"
    version  u32      FORMAT_VERSION (1)
    index    u64      the index of the last entry applied to the state (a committed index)
    term     u64      the serving member's Raft term when the snapshot was taken
    created  u64      Unix time (seconds) when it was taken
    length   u64      the body's length in bytes
    cluster  str      the cluster name
    cid      str      the cluster id of the group it was taken from
    node     str      the id of the member that served it
    sha256   32 bytes SHA-256 of every byte above (magic .. node) followed by the body
    body     length bytes: the replicated state, ``StateMachine.snapshot()``'s JSON (its
             own ``"v"`` is the state's format; its ``"index"`` equals the header's)

Every header field is covered by the checksum, so a flipped bit anywhere is refused. A
file that is shorter than its header says (a transfer cut short) is "truncated"; one with
bytes after the body, a bad magic, another version or a wrong checksum is refused too:
:func:`decode_backup` raises :class:`BackupError` with a one-line message, never decodes
to something else.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "FORMAT_VERSION",
    "HEADER_MAX",
    "MAGIC",
    "Backup",
    "BackupError",
    "Header",
    "check_stream",
    "decode_backup",
    "decode_header",
    "encode_backup",
]

MAGIC = b"HAFLBKUP"
FORMAT_VERSION = 1
_FIXED = struct.Struct("<8sIQQQQ")  # magic, version, index, term, created, length
_U16 = struct.Struct("<H")
_DIGEST = 32
_MAX_U64 = (1 << 64) - 1
#: The longest string field (the cluster name and the ids are far shorter).
MAX_TEXT_BYTES = 1024


class BackupError(ValueError):
    """The bytes are not a whole, intact backup (the message says what is wrong)."""


@dataclass(frozen=True, slots=True)
class Backup:
    cluster: str
    cluster_id: str
    node_id: str
    index: int
    term: int
    created: int
    body: bytes

    @property
    def sha256(self) -> str:
        """The file's checksum (hex), as its header holds it."""
        return hashlib.sha256(_head(self) + self.body).hexdigest()

    def summary(self) -> dict[str, object]:
        """The header as JSON-able fields (no body)."""
        return _summary(self, len(self.body), self.sha256)


def _summary(h: Backup | Header, length: int, sha256: str) -> dict[str, object]:
    return {
        "format": FORMAT_VERSION,
        "cluster": h.cluster,
        "cluster_id": h.cluster_id,
        "node_id": h.node_id,
        "index": h.index,
        "term": h.term,
        "created": h.created,
        "length": length,
        "sha256": sha256,
    }


def _text(what: str, value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > MAX_TEXT_BYTES:
        raise ValueError(f"{what} is longer than {MAX_TEXT_BYTES} bytes")
    return _U16.pack(len(raw)) + raw


def _head(b: Backup) -> bytes:
    for what, n in (("index", b.index), ("term", b.term), ("created", b.created)):
        if not 0 <= n <= _MAX_U64:
            raise ValueError(f"{what} {n} does not fit in 64 bits")
    fixed = _FIXED.pack(MAGIC, FORMAT_VERSION, b.index, b.term, b.created, len(b.body))
    return (
        fixed
        + _text("cluster", b.cluster)
        + _text("cluster id", b.cluster_id)
        + _text("node id", b.node_id)
    )


def encode_backup(b: Backup) -> bytes:
    head = _head(b)
    return head + hashlib.sha256(head + b.body).digest() + b.body


def _take_text(raw: bytes, pos: int, what: str) -> tuple[str, int]:
    if pos + _U16.size > len(raw):
        raise BackupError(f"truncated: the file ends inside its header ({len(raw)} bytes)")
    (n,) = _U16.unpack_from(raw, pos)
    pos += _U16.size
    if n > MAX_TEXT_BYTES:
        raise BackupError(f"corrupt header: the {what} is {n} bytes long")
    if pos + n > len(raw):
        raise BackupError(f"truncated: the file ends inside its header ({len(raw)} bytes)")
    try:
        text = raw[pos : pos + n].decode("utf-8")
    except UnicodeDecodeError:
        raise BackupError(f"corrupt header: the {what} is not UTF-8") from None
    if not text.isprintable():  # names and ids: no escape sequence for the operator's terminal
        raise BackupError(f"corrupt header: the {what} holds a control character")
    return text, pos + n


#: The longest header with its checksum: a file's first HEADER_MAX bytes hold it whole.
HEADER_MAX = _FIXED.size + 3 * (_U16.size + MAX_TEXT_BYTES) + _DIGEST


@dataclass(frozen=True, slots=True)
class Header:
    """A backup's header: ``head_end`` bytes of fields, then the checksum, then ``length``
    bytes of state."""

    cluster: str
    cluster_id: str
    node_id: str
    index: int
    term: int
    created: int
    length: int
    head_end: int

    def summary(self, sha256: str) -> dict[str, object]:
        """The header as JSON-able fields, as :meth:`Backup.summary` gives them."""
        return _summary(self, self.length, sha256)


def decode_header(raw: bytes) -> Header:
    """The header at the start of ``raw`` (which may hold more, or the whole file);
    :class:`BackupError` when it is not one, or ``raw`` ends inside it."""
    if len(raw) < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
        raise BackupError("not a hafleet snapshot file (bad magic)")
    if len(raw) < _FIXED.size:
        raise BackupError(f"truncated: the file ends inside its header ({len(raw)} bytes)")
    _, version, index, term, created, length = _FIXED.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise BackupError(
            f"unsupported snapshot file format {version} (this agent reads {FORMAT_VERSION})"
        )
    pos = _FIXED.size
    cluster, pos = _take_text(raw, pos, "cluster name")
    cluster_id, pos = _take_text(raw, pos, "cluster id")
    node_id, pos = _take_text(raw, pos, "node id")
    return Header(cluster, cluster_id, node_id, index, term, created, length, pos)


def _check_length(h: Header, have: int) -> None:
    if have < h.length:
        raise BackupError(
            f"truncated: the header says {h.length} bytes of state, the file holds "
            f"{max(have, 0)} (an interrupted download or copy?)"
        )
    if have > h.length:
        raise BackupError(
            f"corrupt: {have - h.length} bytes after the end of the state the header announces"
        )


def check_stream(read: Callable[[int], bytes], chunk: int = 1 << 20) -> tuple[Header, str]:
    """Check a backup read a ``chunk`` at a time through ``read`` (a file's): its header, its
    length and its checksum, in memory bounded by ``chunk``. (The state's JSON is not parsed:
    that needs it whole; :func:`decode_backup` does, for a restore.) The header and the
    checksum (hex), or :class:`BackupError`."""
    start = read(HEADER_MAX)
    h = decode_header(start)
    if len(start) < h.head_end + _DIGEST:
        raise BackupError(f"truncated: the file ends inside its header ({len(start)} bytes)")
    digest = start[h.head_end : h.head_end + _DIGEST]
    sha = hashlib.sha256(start[: h.head_end])
    body = start[h.head_end + _DIGEST :]
    have = len(body)
    sha.update(body)
    while data := read(chunk):
        have += len(data)
        if have <= h.length:
            sha.update(data)  # (a file too long is refused by its length below)
    _check_length(h, have)
    if sha.digest() != digest:
        raise BackupError("corrupt: the SHA-256 checksum does not match the contents")
    return h, digest.hex()


def decode_backup(raw: bytes) -> Backup:
    """The backup in ``raw``; :class:`BackupError` when it is not a whole, intact one."""
    h = decode_header(raw)
    head_end = h.head_end
    _check_length(h, len(raw) - head_end - _DIGEST)
    digest = raw[head_end : head_end + _DIGEST]
    body = raw[head_end + _DIGEST :]
    if hashlib.sha256(raw[:head_end] + body).digest() != digest:
        raise BackupError("corrupt: the SHA-256 checksum does not match the contents")
    index = h.index
    try:
        state_index = json.loads(body.decode("utf-8"))["index"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError):
        # (RecursionError: a state nested deeper than the parser goes, which no agent saves)
        raise BackupError("corrupt: the state is not the replicated state's JSON") from None
    if type(state_index) is not int or state_index != index:  # (True == 1)
        raise BackupError(f"corrupt: the state is at index {state_index}, the header says {index}")
    return Backup(h.cluster, h.cluster_id, h.node_id, index, h.term, h.created, body)
