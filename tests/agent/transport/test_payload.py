"""Unpacking a frame's msgpack payload (hafleet_agent.payload, named by wire as the transport
takes it): what msgpack would build, at a bounded cost."""

from __future__ import annotations

import contextlib
import gc
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hafleet_agent import payload, wire

SMALL = payload._SMALL_PAYLOAD
PAD = b"p" * SMALL  # a bin that pushes any value onto the item-by-item path

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(width=32)  # packable as float 32 as well as float 64
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=8)
        | st.dictionaries(st.text(max_size=5) | st.binary(max_size=3), inner, max_size=5)
    ),
    max_leaves=40,
)


def same(a: object, b: object) -> bool:
    """Equality that also holds for NaN in the same place."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(values, st.booleans())
@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_both_paths_build_what_msgpack_builds(value: object, single: bool) -> None:
    packed = msgpack.packb(value, use_single_float=single)
    expected = msgpack.unpackb(packed, raw=False, strict_map_key=True)
    assert same(wire.unpack_payload(packed), expected)  # small: msgpack with limits
    for big in (b"\x92" + packed + msgpack.packb(PAD), msgpack.packb([value, PAD])):
        assert len(big) > SMALL
        got = wire.unpack_payload(big)  # large: the walker
        assert same(got, msgpack.unpackb(big, raw=False, strict_map_key=True))
        assert same(wire.unpack_payload(memoryview(big)), got)


@given(st.binary(max_size=64), st.integers(0, 3))
@settings(deadline=None, max_examples=1000)
def test_the_walker_refuses_what_msgpack_refuses(tail: bytes, cut: int) -> None:
    # any bytes after a large bin header: the walker and msgpack agree on accept or refuse
    data = b"\x92\xc6" + len(PAD).to_bytes(4, "big") + PAD + tail
    data = data[: len(data) - cut]
    try:
        expected = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:
        expected = None
    if isinstance(expected, list) and any(
        isinstance(x, msgpack.ExtType | msgpack.Timestamp) for x in expected
    ):
        expected = None  # extension types are refused on purpose
    try:
        got = wire.unpack_payload(data)
    except wire.ProtocolError:
        got = None
    assert same(got, expected)


@pytest.mark.parametrize(
    "data",
    [
        b"\xd4\x05\x00",  # fixext 1
        b"\xc7\x00\x05",  # ext 8 of length 0
        b"\xd6\xff\x00\x00\x00\x00",  # a timestamp
        msgpack.packb([msgpack.ExtType(1, b"x"), PAD]),
        msgpack.packb([msgpack.Timestamp(1, 0), PAD]),
        msgpack.packb([{1: 2}, PAD]),  # a map key that is not str or bytes
        b"\xc1",
        msgpack.packb([PAD]) + b"\xc0",  # trailing bytes on the walker's path
        msgpack.packb([PAD])[:-1],  # truncated
        b"\x91" * 40 + msgpack.packb(PAD),  # nested deeper than MAX_PAYLOAD_DEPTH
        b"\x92\xdd"
        + (wire.MAX_PAYLOAD_ITEMS).to_bytes(4, "big")
        + b"\xc0" * wire.MAX_PAYLOAD_ITEMS,
    ],
)
def test_refused_payloads_raise_a_protocol_error(data: bytes) -> None:
    with pytest.raises(wire.ProtocolError, match="payload is not one msgpack value"):
        wire.unpack_payload(data)


def test_the_item_budget_is_exact() -> None:
    # the outer array, the inner array and its elements: MAX_PAYLOAD_ITEMS in all
    n = wire.MAX_PAYLOAD_ITEMS - 3
    ok = b"\x92\xdd" + n.to_bytes(4, "big") + b"\xc0" * n + msgpack.packb(PAD)
    assert wire.unpack_payload(ok)[1] == PAD
    over = b"\x92\xdd" + (n + 1).to_bytes(4, "big") + b"\xc0" * (n + 1) + msgpack.packb(PAD)
    with pytest.raises(wire.ProtocolError, match="items"):
        wire.unpack_payload(over)


def peak(data: bytes) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        with contextlib.suppress(wire.ProtocolError):
            wire.unpack_payload(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


MiB = 1 << 20


def test_a_mebibyte_of_empty_maps_costs_a_few_megabytes_not_seventy() -> None:
    # the finding: one byte (0x80) is one empty dict, ~72 bytes: 1 MiB made ~75 MB
    data = b"\xdd" + MiB.to_bytes(4, "big") + b"\x80" * MiB
    assert peak(data) < len(data) + 6 * MiB


@pytest.mark.parametrize(
    "item",
    [b"\x80", b"\x90", b"\xe0", b"\xa2\xc4\x81", b"\xcb" + b"\x00" * 8, b"\xc4\x02ab"],
    ids=["empty map", "empty array", "uncached int", "2-byte character", "float", "2-byte bin"],
)
@pytest.mark.parametrize("size", [SMALL, 4 * MiB])
def test_no_payload_costs_more_than_its_bytes_and_6_mb(item: bytes, size: int) -> None:
    n = (size - 16) // len(item)
    data = b"\xdd" + n.to_bytes(4, "big") + item * n
    assert peak(data) < len(data) + 6 * MiB


def test_a_raft_frame_costs_its_bytes() -> None:
    data = msgpack.packb({"k": "raft", "cid": "c", "m": b"x" * (4 * MiB)})
    assert peak(data) < len(data) + (64 << 10)


def test_wire_names_the_payload_module_and_its_errors() -> None:
    # the transport takes both from wire: the same objects, not copies
    assert wire.unpack_payload is payload.unpack_payload
    assert wire.ProtocolError is payload.ProtocolError
    assert issubclass(wire.ProtocolError, wire.Closed) and issubclass(wire.AuthError, wire.Closed)
