"""A request body in the chunked transfer coding (RFC 9112 §7.1), decoded as it arrives:
:class:`ChunkedDecoder` is sans-IO (bytes in, a body and a state out), used by
:mod:`.http`, one per request.

Each byte is decoded once: :meth:`ChunkedDecoder.feed` consumes what it has decoded (the
caller drops it from its buffer) and keeps where it is in the grammar (a size line, a
chunk's data, its CRLF, the trailer section) until the next read, so a body costs time
linear in its bytes however it is cut into reads and chunks. What it refuses
(:class:`ChunkError`, a 400):

- a chunk size that is not hex digits only (no sign, ``0x``, ``_`` or spaces around it:
  ``int(x, 16)`` takes them, a proxy in front may read them otherwise), or over
  MAX_SIZE_DIGITS significant digits (2^64 bytes and more);
- a size line (with its extensions) over MAX_SIZE_LINE bytes, extensions over
  MAX_EXTENSIONS bytes in one body, a control character in them;
- more chunks than :func:`max_chunks` of the body limit (a body in one-byte chunks costs a
  loop turn per byte);
- a chunk's data not followed by CRLF;
- a trailer section over MAX_TRAILERS bytes or MAX_TRAILER_FIELDS lines, a trailer line
  over MAX_TRAILER_LINE bytes, without a colon, with a bad name or a control character
  (trailers are read and dropped).

A line must end with CRLF (a bare LF or CR is a control character in it). A body over the
limit stops the decoding: ``too_large`` says how large it would be (the answer is a 413).
"""

from __future__ import annotations

import re

#: A chunk's size line: the size and its extensions (RFC 9112: ``chunk-size [ chunk-ext ]``).
MAX_SIZE_LINE = 4096
#: Significant hex digits of a chunk size: 16 is 2^64 - 1 bytes, far over any body limit.
MAX_SIZE_DIGITS = 16
#: Chunk extensions (after the size), all the size lines of one body together.
MAX_EXTENSIONS = 8190 * 8
#: The trailer section (after the last chunk): as the header section.
MAX_TRAILERS = 8190 * 8
MAX_TRAILER_LINE = 8190
MAX_TRAILER_FIELDS = 128

_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]+)(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?\Z")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkError(ValueError):
    """A chunked body that is not as RFC 9112 says (the request is answered 400)."""


def max_chunks(limit: int) -> int:
    """At most this many chunks in a body of at most ``limit`` bytes: 1024, or one per 64
    bytes of the limit when that is more (16384 for 1 MiB)."""
    return max(1024, limit // 64)


class ChunkedDecoder:
    """One chunked body, fed its bytes as they come (see the module's docstring)."""

    __slots__ = (
        "limit",
        "max_chunks",
        "body",
        "chunks",
        "too_large",
        "_state",
        "_left",
        "_scanned",
        "_ext_bytes",
        "_trailer_bytes",
        "_trailer_fields",
    )

    def __init__(self, limit: int, chunks: int | None = None) -> None:
        self.limit = limit
        self.max_chunks = max_chunks(limit) if chunks is None else chunks
        self.body = bytearray()
        self.chunks = 0
        self.too_large = 0  # > 0: the body would be this large, over the limit
        self._state = _SIZE
        self._left = 0  # the current chunk's data bytes still to come
        self._scanned = 0  # bytes of the current line searched for its CRLF already
        self._ext_bytes = 0
        self._trailer_bytes = 0
        self._trailer_fields = 0

    @property
    def done(self) -> bool:
        """The body is whole (``body``), or over the limit (``too_large``)."""
        return self._state == _DONE

    def feed(self, buf: bytearray | bytes, pos: int = 0) -> int:
        """Decode ``buf[pos:]`` as far as it goes; returns where the decoded bytes end
        (consumed: the caller drops ``buf[:returned]`` and feeds the rest with what comes
        next). Once ``done``, the bytes after the returned position are the next request's.
        Raises :class:`ChunkError`."""
        n = len(buf)
        while pos < n or self._state == _DONE:
            state = self._state
            if state == _DONE:
                return pos
            if state == _DATA:
                take = min(self._left, n - pos)
                self.body += buf[pos : pos + take]
                pos += take
                self._left -= take
                if self._left:
                    return pos
                self._state = _DATA_END
            elif state == _DATA_END:
                if n - pos < 2:
                    return pos
                if buf[pos : pos + 2] != b"\r\n":
                    raise ChunkError("a chunk's data does not end with CRLF")
                pos += 2
                self._state = _SIZE
            else:
                limit = MAX_SIZE_LINE if state == _SIZE else MAX_TRAILER_LINE
                eol = buf.find(b"\r\n", pos + max(self._scanned - 1, 0), pos + limit + 2)
                if eol < 0:
                    self._scanned = n - pos
                    self._check_partial(n - pos, limit)
                    return pos
                line = bytes(buf[pos:eol])
                self._scanned = 0
                pos = eol + 2
                if state == _SIZE:
                    self._size_line(line)
                else:
                    self._trailer_line(line)
        return pos

    def _check_partial(self, length: int, limit: int) -> None:
        """A line without its CRLF yet, ``length`` bytes so far (its last maybe the CR)."""
        if length > limit + 1:
            what = "a chunk size line" if self._state == _SIZE else "a trailer line"
            raise ChunkError(f"{what} is over {limit} bytes")
        if self._state == _TRAILER and self._trailer_bytes + length > MAX_TRAILERS:
            raise ChunkError(f"the trailer section is over {MAX_TRAILERS} bytes")

    def _size_line(self, line: bytes) -> None:
        m = _SIZE_LINE.match(line)
        if m is None:
            raise ChunkError(f"bad chunk size line {line[:20]!r}")
        digits = m.group(1)
        if len(digits.lstrip(b"0")) > MAX_SIZE_DIGITS:
            raise ChunkError(f"a chunk size over {MAX_SIZE_DIGITS} hex digits")
        self._ext_bytes += len(line) - len(digits)
        if self._ext_bytes > MAX_EXTENSIONS:
            raise ChunkError(f"chunk extensions over {MAX_EXTENSIONS} bytes")
        size = int(digits, 16)
        if size == 0:
            self._state = _TRAILER
            return
        self.chunks += 1
        if self.chunks > self.max_chunks:
            raise ChunkError(f"more than {self.max_chunks} chunks in a body")
        if len(self.body) + size > self.limit:
            self.too_large = len(self.body) + size
            self._state = _DONE
            return
        self._left = size
        self._state = _DATA

    def _trailer_line(self, line: bytes) -> None:
        if not line:  # the empty line that ends the body
            self._state = _DONE
            return
        self._trailer_bytes += len(line) + 2
        self._trailer_fields += 1
        if self._trailer_bytes > MAX_TRAILERS:
            raise ChunkError(f"the trailer section is over {MAX_TRAILERS} bytes")
        if self._trailer_fields > MAX_TRAILER_FIELDS:
            raise ChunkError(f"more than {MAX_TRAILER_FIELDS} trailer fields")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise ChunkError(f"bad trailer line {line[:40]!r}")
        if _BAD_VALUE.search(value):
            raise ChunkError(f"a control character in trailer {name[:40]!r}")
