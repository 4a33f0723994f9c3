"""A frame's payload, sans I/O: one msgpack value, unpacked within a budget of memory.

:func:`unpack_payload` is what :mod:`hafleet_agent.wire` (the hellos) and the transport (every
later frame) turn a payload into objects with; a payload that is not one msgpack value, or
would cost more to build than its bytes allow, is a :class:`~hafleet_agent.wireerrors.ProtocolError`
(the connection closes)."""

from __future__ import annotations

import struct

import msgpack

from .wireerrors import ProtocolError

__all__ = ["MAX_PAYLOAD_DEPTH", "MAX_PAYLOAD_ITEMS", "unpack_payload"]

_SMALL_PAYLOAD = 32 << 10
"""Payloads up to this size are unpacked by msgpack itself (see :func:`unpack_payload`)."""
MAX_PAYLOAD_ITEMS = 1 << 16
"""The most msgpack items (values, keys and containers) one larger payload may hold."""
MAX_PAYLOAD_DEPTH = 32
"""The deepest nesting of arrays and maps one larger payload may hold."""
_FIXED = {  # type byte -> (size, decoder) of the fixed-size scalars
    0xCA: (4, struct.Struct(">f").unpack_from),
    0xCB: (8, struct.Struct(">d").unpack_from),
    **{
        b: (struct.calcsize(fmt), struct.Struct(fmt).unpack_from)
        for b, fmt in zip(
            range(0xCC, 0xD4), (">B", ">H", ">I", ">Q", ">b", ">h", ">i", ">q"), strict=True
        )
    },
}
_LENGTH_SIZE = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
_LENGTH_SIZE.update({0xDC: 2, 0xDD: 4, 0xDE: 2, 0xDF: 4})


def _no_ext(code: int, data: bytes) -> object:
    raise ValueError(f"extension type {code}")


def unpack_payload(payload: memoryview | bytes) -> object:
    """The one msgpack value of ``payload``; ProtocolError for anything else.

    Decoding must not cost much more than the payload itself, whoever sent it: a msgpack
    item of one byte (an empty map, say) becomes an object of 60-80 bytes, so a generic
    unpacker lets a frame expand about 75-fold. Small payloads (at most 32 KiB, the
    hellos and nearly every frame) go to msgpack with every length bounded by the payload,
    which caps them at a few MB whatever they hold. Larger ones are read item by item by
    :class:`_Walker`, which refuses more than MAX_PAYLOAD_ITEMS items or MAX_PAYLOAD_DEPTH
    levels before it builds them: their cost is their bytes plus at most 65,536 small
    objects. Extension types are never valid (the agent sends none), map keys are str
    or bytes.
    """
    try:
        if len(payload) <= _SMALL_PAYLOAD:
            n = len(payload)
            return msgpack.unpackb(
                payload,
                raw=False,
                strict_map_key=True,
                max_str_len=n,
                max_bin_len=n,
                max_array_len=n,
                max_map_len=n // 2,
                max_ext_len=0,
                ext_hook=_no_ext,
            )
        return _Walker(memoryview(payload)).unpack()
    except ProtocolError:
        raise
    except Exception as e:
        raise ProtocolError(f"payload is not one msgpack value ({type(e).__name__})") from None


class _Walker:
    """Reads one msgpack value item by item, with a budget of items and of depth.

    It builds what ``msgpack.unpackb(raw=False, strict_map_key=True)`` builds, but checks
    each item's type byte and length before it makes the object, so hostile input is
    refused before it costs memory. Python is slower than msgpack's C per item, which is
    why only large payloads (few items, mostly one large bin) come here.
    """

    __slots__ = ("buf", "pos", "items")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0
        self.items = 0

    def unpack(self) -> object:
        obj = self._value(0)
        if self.pos != len(self.buf):
            raise ProtocolError(
                f"payload is not one msgpack value ({len(self.buf) - self.pos} bytes after it)"
            )
        return obj

    def _take(self, n: int) -> memoryview:
        start, end = self.pos, self.pos + n
        if end > len(self.buf):
            raise ProtocolError("payload is not one msgpack value (truncated)")
        self.pos = end
        return self.buf[start:end]

    def _value(self, depth: int) -> object:
        self.items += 1
        if self.items > MAX_PAYLOAD_ITEMS:
            raise ProtocolError(
                f"payload is not one msgpack value (more than {MAX_PAYLOAD_ITEMS} items)"
            )
        b = self._take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0xA0 <= b <= 0xBF:
            return str(self._take(b - 0xA0), "utf-8")
        if b <= 0x9F:
            return self._container(b, b & 0x0F, depth)
        if b in _FIXED:
            size, decode = _FIXED[b]
            return decode(self._take(size))[0]
        if b == 0xC0:
            return None
        if b in (0xC2, 0xC3):
            return b == 0xC3
        if b not in _LENGTH_SIZE:  # 0xc1, the extension types
            raise ProtocolError("payload is not one msgpack value (an extension type)")
        n = int.from_bytes(self._take(_LENGTH_SIZE[b]), "big")
        if b <= 0xC6:
            return bytes(self._take(n))
        if b <= 0xDB:
            return str(self._take(n), "utf-8")
        return self._container(b, n, depth)

    def _container(self, b: int, n: int, depth: int) -> object:
        if depth >= MAX_PAYLOAD_DEPTH:
            raise ProtocolError(
                f"payload is not one msgpack value (nested deeper than {MAX_PAYLOAD_DEPTH})"
            )
        is_map = b <= 0x8F or b >= 0xDE
        # every item takes at least one byte: a count beyond the payload is a lie
        if (2 * n if is_map else n) > len(self.buf) - self.pos:
            raise ProtocolError("payload is not one msgpack value (truncated)")
        if not is_map:
            return [self._value(depth + 1) for _ in range(n)]
        out: dict[object, object] = {}
        for _ in range(n):
            key = self._value(depth + 1)
            if type(key) is not str and type(key) is not bytes:
                raise ProtocolError("payload is not one msgpack value (a map key not str)")
            out[key] = self._value(depth + 1)
        return out
