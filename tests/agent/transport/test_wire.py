"""The wire format without I/O (hafleet_agent.wire): no asyncio or socket anywhere in it, the
frame decoder on split, garbled and oversized input, the handshake and sealed frames byte by
byte against HMAC computed here."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from layering import absolute_tops

from hafleet_agent import wire

KEY = b"k" * 32
P = b"hafleet/v1"
NO_IO = {"asyncio", "socket", "selectors", "select", "ssl", "threading"}


def test_wire_names_no_io_module_in_any_import() -> None:
    top = {name for _, name in absolute_tops(Path(wire.__file__).read_text())}  # nested too
    assert "hmac" in top  # the walk sees the module's imports
    assert not top & NO_IO


def test_importing_wire_loads_neither_asyncio_nor_socket() -> None:
    # in a fresh interpreter: what wire imports, directly or not, stays free of I/O loops
    code = "import sys, hafleet_agent.wire; print(sorted(m for m in %r if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code % sorted(NO_IO)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "[]"


# ---- the frame decoder ----------------------------------------------------------------------


def stream(bodies: list[bytes]) -> bytes:
    return b"".join(wire.frame(b) for b in bodies)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6), st.lists(st.integers(1, 50), max_size=40))
def test_any_split_of_a_stream_gives_back_its_frames(bodies: list[bytes], cuts: list[int]) -> None:
    data = stream(bodies)
    decoder = wire.FrameDecoder(limit=40)
    got: list[bytes] = []
    pos = 0
    for n in [*cuts, len(data)]:
        decoder.feed(memoryview(data)[pos : pos + n])
        pos += n
        got.extend(decoder.frames())
    assert got == bodies
    assert decoder.buffered() == 0
    with pytest.raises(wire.Closed) as e:
        decoder.end()
    assert type(e.value) is wire.Closed  # a clean end between frames


def test_feeding_what_is_wanted_never_reads_past_a_frame() -> None:
    data = stream([b"first", b"", b"third body"]) + b"\x00\x00"  # a next header begun
    decoder = wire.FrameDecoder(limit=100)
    pos, got = 0, []
    while pos < len(data):
        want = decoder.wanted()
        assert want > 0
        decoder.feed(data[pos : pos + want])
        pos += want
        if (body := decoder.next_frame()) is not None:
            got.append(body)
            assert decoder.buffered() == 0  # nothing of the next frame was taken in
    assert got == [b"first", b"", b"third body"]
    assert decoder.wanted() == 2


def test_a_whole_chunk_is_returned_without_a_copy() -> None:
    body = b"x" * 1000
    decoder = wire.FrameDecoder(limit=1000)
    decoder.feed(len(body).to_bytes(4, "big"))
    assert decoder.next_frame() is None and decoder.wanted() == 1000
    decoder.feed(body)
    assert decoder.next_frame() is body


def test_an_oversized_length_is_refused_as_soon_as_the_header_is_in() -> None:
    decoder = wire.FrameDecoder(limit=128, what="the client's handshake")
    decoder.feed(b"\xff\xff")
    assert decoder.next_frame() is None
    decoder.feed(b"\xff\xff")  # the header is complete: no body byte is needed to refuse it
    with pytest.raises(wire.ProtocolError) as e:
        decoder.next_frame()
    assert str(e.value) == (
        "the client's handshake: frame of 4294967295 bytes exceeds the limit of 128"
    )


def test_the_limit_may_change_between_frames() -> None:
    decoder = wire.FrameDecoder(limit=4)
    decoder.feed(stream([b"abcd", b"abcde"]))
    assert decoder.next_frame() == b"abcd"
    with pytest.raises(wire.ProtocolError, match="frame of 5 bytes exceeds the limit of 4"):
        decoder.next_frame()
    decoder = wire.FrameDecoder(limit=4)
    decoder.feed(stream([b"abcd", b"abcde"]))
    assert decoder.next_frame() == b"abcd"
    decoder.limit = 5
    assert decoder.next_frame() == b"abcde"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x00", "truncated frame header while reading a frame"),
        (b"\x00\x00\x00\x0aabc", "truncated frame: 3 of 10 bytes, then end of stream (a frame)"),
        (b"\x00\x00\x00\x0a", "truncated frame: 0 of 10 bytes, then end of stream (a frame)"),
    ],
)
def test_a_stream_cut_short_is_a_protocol_error(data: bytes, reason: str) -> None:
    decoder = wire.FrameDecoder(limit=100)
    decoder.feed(data)
    assert decoder.frames() == []
    with pytest.raises(wire.ProtocolError) as e:
        decoder.end()
    assert str(e.value) == reason


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 64))
def test_garbled_bytes_give_frames_as_their_headers_say_or_a_protocol_error(
    data: bytes, limit: int
) -> None:
    decoder = wire.FrameDecoder(limit)
    decoder.feed(data)
    got: list[bytes] = []
    try:
        while (body := decoder.next_frame()) is not None:
            got.append(body)
        decoder.end()
    except wire.Closed as e:
        error: wire.Closed = e
    else:
        raise AssertionError("end() always raises")
    pos = 0  # the reference: walk the headers by hand
    for body in got:
        n = int.from_bytes(data[pos : pos + 4], "big")
        assert n <= limit and body == data[pos + 4 : pos + 4 + n]
        pos += 4 + n
    rest = data[pos:]
    if not rest:
        assert type(error) is wire.Closed
    elif len(rest) >= 4 and int.from_bytes(rest[:4], "big") > limit:
        assert "exceeds the limit" in str(error)
    else:
        assert isinstance(error, wire.ProtocolError) and "truncated" in str(error)


# ---- the handshake, sealed frames, hellos ---------------------------------------------------


def mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def test_the_handshake_messages_byte_by_byte() -> None:
    nonce_c, nonce_s = b"c" * 32, b"s" * 32
    assert wire.opening(nonce_c) == P + nonce_c
    assert wire.check_opening(P + nonce_c) == nonce_c
    answer = wire.server_proof(KEY, nonce_c, nonce_s)
    assert answer == P + nonce_s + mac(KEY, P, b" server", nonce_c, nonce_s)
    assert wire.check_server_proof(KEY, nonce_c, answer) == nonce_s
    proof = wire.client_proof(KEY, nonce_c, nonce_s)
    assert proof == mac(KEY, P, b" client", nonce_c, nonce_s)
    wire.check_client_proof(KEY, nonce_c, nonce_s, proof)
    client = wire.Session.after_handshake(KEY, nonce_c, nonce_s, client=True)
    sealed = client.seal(b"\xc0")
    counter = (0).to_bytes(8, "big")
    skey = mac(KEY, P, nonce_c, nonce_s)
    assert sealed == wire.frame(counter + b"\xc0" + mac(skey, b"\x01", counter, b"\xc0"))


@pytest.mark.parametrize(
    ("check", "reason"),
    [
        (lambda: wire.check_opening(b"hafleet/v2" + b"c" * 32), "does not speak hafleet/v1"),
        (lambda: wire.check_opening(P + b"c" * 31), "does not speak hafleet/v1"),
        (lambda: wire.check_server_proof(KEY, b"c" * 32, P + b"s" * 32), "does not speak"),
        (
            lambda: wire.check_server_proof(
                KEY, b"c" * 32, wire.server_proof(b"o" * 32, b"c" * 32, b"s" * 32)
            ),
            "the server failed to prove the cluster key",
        ),
        (
            lambda: wire.check_client_proof(
                KEY, b"c" * 32, b"s" * 32, wire.client_proof(KEY, b"s" * 32, b"c" * 32)
            ),
            "the client failed to prove the cluster key",
        ),
    ],
)
def test_a_bad_handshake_message_is_an_auth_error(check: object, reason: str) -> None:
    with pytest.raises(wire.AuthError, match=reason):
        check()  # type: ignore[operator]


@pytest.mark.parametrize("key_len", [0, 1, 32, 63, 64, 65, 200])
@pytest.mark.parametrize("size", [0, 1, 55, 56, 64, 1000, (1 << 16) + 1, 1 << 20])
def test_a_sealed_frame_carries_the_standard_hmac_sha256_of_its_direction_counter_and_payload(
    key_len: int, size: int
) -> None:
    # The session computes HMAC from keyed SHA-256 states of its own; the tag must be the
    # one hmac computes (what an earlier agent checks), for any key and payload length.
    key = bytes(range(256))[:key_len]
    payload = bytes((7 * i) & 0xFF for i in range(size))
    for client, direction in ((True, b"\x01"), (False, b"\x02")):
        s = wire.Session(key, client=client)
        for n in range(2):
            counter = n.to_bytes(8, "big")
            sealed = s.seal(payload)
            assert sealed == wire.frame(counter + payload + mac(key, direction, counter, payload))


def test_sealed_frames_open_once_in_order_and_only_on_their_connection() -> None:
    nc, ns = wire.new_nonce(), wire.new_nonce()
    client = wire.Session.after_handshake(KEY, nc, ns, client=True)
    server = wire.Session.after_handshake(KEY, nc, ns, client=False)
    other = wire.Session.after_handshake(KEY, nc, wire.new_nonce(), client=False)
    big = b"b" * (1 << 17)  # hashed in pieces, not in one call
    bodies = [client.seal(p)[4:] for p in (b"one", big, b"three")]
    with pytest.raises(wire.AuthError, match="failed authentication"):
        other.open(bodies[0])
    assert bytes(server.open(bodies[0])) == b"one"
    with pytest.raises(wire.AuthError, match="counter 0, expected 1"):
        server.open(bodies[0])
    with pytest.raises(wire.AuthError, match="counter 2, expected 1"):
        server.open(bodies[2])
    assert bytes(server.open(bodies[1])) == big
    with pytest.raises(wire.AuthError, match="failed authentication"):
        server.open(bodies[2][:-1] + bytes([bodies[2][-1] ^ 1]))
    with pytest.raises(wire.ProtocolError, match="too short"):
        server.open(bodies[2][:39])
    assert bytes(server.open(bodies[2])) == b"three"
    with pytest.raises(wire.AuthError):  # a server's frame does not open as a client's
        server.open(server.seal(b"back")[4:])


def test_a_hello_round_trips_and_a_malformed_one_is_refused() -> None:
    payload = wire.hello_payload("n1", "lab", None, "[::1]:7400")
    assert msgpack.unpackb(payload) == {
        "node_id": "n1",
        "cluster": "lab",
        "cluster_id": None,
        "addr": "[::1]:7400",
    }
    assert wire.parse_hello(payload) == ("n1", "lab", None, "[::1]:7400")
    good = {"node_id": "n1", "cluster": "lab", "cluster_id": "c", "addr": "h:1", "x": 1}
    assert wire.parse_hello(msgpack.packb(good)) == ("n1", "lab", "c", "h:1")
    for bad in (
        [1],
        {k: v for k, v in good.items() if k != "addr"},
        {**good, "node_id": ""},
        {**good, "cluster": "x" * 256},
        {**good, "cluster_id": 5},
        {**good, "addr": "::1:7400"},
        {**good, "addr": "h:0"},
    ):
        with pytest.raises(wire.ProtocolError, match="malformed hello"):
            wire.parse_hello(msgpack.packb(bad))
