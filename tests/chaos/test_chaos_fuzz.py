"""Fuzzing the agent's decoders with hypothesis: the transport's frame and hello parsing, the
Raft message codec, and the HTTP API's input parsing (the real aiohttp app from
``api.build_app`` over a stub agent that applies writes to a real ``StateMachine``).

The number of examples per test is ``HFCH_FUZZ_EXAMPLES`` (default 150, about 15 s in all on
a busy machine, for ``make test``; ``make chaos`` sets 5000). Every crash found becomes a
regression test in ``test_regressions_*`` below, with the input spelled out.

Properties: a decoder returns a value or raises its documented error (``_Closed`` and its
subclasses in the transport, ``CodecError`` in the codec), nothing else; the transport's
server closes a bad connection and keeps serving a good one; the API answers every request
with a documented status (never 500) and a JSON ``{"error"}`` body for errors, and a refused
request changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hafleet_agent import transport as tr
from hafleet_agent.codec import CodecError, decode_message, encode_message
from hafleet_agent.raft.types import Entry, Message, MessageType
from hafleet_agent.state import StateMachine

EXAMPLES = int(os.environ.get("HFCH_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SLOW_FUZZ = settings(FUZZ, max_examples=max(20, EXAMPLES // 5))
KEY = secrets.token_bytes(32)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(out) - 1, 0)))
        if not out:
            out += draw(st.binary(min_size=1, max_size=4))
        elif op == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            out[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del out[pos]
        else:
            del out[pos:]
    return bytes(out)


# ---- the transport's frames and hellos -------------------------------------------------------


def read_frame(data: bytes, limit: int) -> bytes:
    async def go() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await tr._read_frame(reader, limit, "fuzz")

    return asyncio.run(go())


@given(st.binary(max_size=300), st.sampled_from([128, 4096, 1 << 20]))
@FUZZ
def test_fuzz_read_frame(data: bytes, limit: int) -> None:
    try:
        body = read_frame(data, limit)
    except tr._Closed:
        return
    n = int.from_bytes(data[:4], "big")
    assert n <= limit and body == data[4 : 4 + n]


def sessions() -> tuple[tr._Session, tr._Session]:
    skey = secrets.token_bytes(32)
    return tr._Session(skey, client=True), tr._Session(skey, client=False)


@given(st.binary(max_size=200))
@FUZZ
def test_fuzz_open_random_bodies(body: bytes) -> None:
    _, server = sessions()
    with pytest.raises(tr._Closed):
        server.open(body)  # nobody can forge a tag without the session key
    assert server.recv_counter == 0


@given(st.lists(st.binary(max_size=64), min_size=1, max_size=5), st.data())
@FUZZ
def test_fuzz_open_mutated_replayed_frames(payloads: list[bytes], data: st.DataObject) -> None:
    client, server = sessions()
    frames = [client.seal(p)[4:] for p in payloads]  # bodies without the length header
    i = data.draw(st.integers(0, len(frames) - 1))
    for k in range(i):
        assert bytes(server.open(frames[k])) == payloads[k]
    bad = data.draw(mutated(frames[i]) | st.sampled_from(frames[:i] or [b""]))
    if bad == frames[i]:
        assert bytes(server.open(bad)) == payloads[i]
        return
    with pytest.raises(tr._Closed):  # tampered (bad tag), replayed/reordered (counter), short
        server.open(bad)
    assert server.recv_counter == i


def hello_transport() -> tr.Transport:
    return tr.Transport(
        node_id="srv",
        cluster="fuzz",
        key=KEY,
        bind_host="127.0.0.1",
        port=0,
        advertise="127.0.0.1:1",
        on_frame=lambda peer, obj: None,
        accept_peer=lambda peer: True,
    )


hello_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.binary(max_size=8)
    | st.text(max_size=300)
)
hellos = st.fixed_dictionaries(
    {},
    optional={
        "node_id": hello_scalars | st.sampled_from(["srv", "n1"]),
        "cluster": hello_scalars | st.just("fuzz"),
        "cluster_id": hello_scalars,
        "addr": hello_scalars | st.sampled_from(["10.0.0.1:7400", "[::1]:1", "h:0", "h:99999"]),
        "extra": hello_scalars,
    },
)


@given(hellos | hello_scalars)
@FUZZ
def test_fuzz_hello(hello: Any) -> None:
    t = hello_transport()
    client, server = sessions()
    body = client.seal(msgpack.packb(hello))[4:]
    conn = tr._Conn(None, None, "fuzz", session=server)  # type: ignore[arg-type]
    try:
        peer = t._check_hello(conn, body, outbound=False)
    except tr._Closed:
        return
    assert isinstance(peer.node_id, str) and peer.node_id != "srv"
    assert tr.parse_addr(peer.addr)


@given(st.binary(max_size=200))
@FUZZ
def test_fuzz_unpack(data: bytes) -> None:
    with contextlib.suppress(tr._ProtocolError):
        tr._unpack(data)


class LoopThread:
    """An asyncio loop in a thread, for servers that blocking test code talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class _Bugs(logging.Handler):
    """Counts records logged with a traceback: the transport's "internal error" path."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "internal error" in record.getMessage():
            self.records.append(record)


@pytest.fixture(scope="module")
def transport_server() -> Iterator[tuple[LoopThread, tr.Transport, list[object], _Bugs]]:
    lt = LoopThread()
    received: list[object] = []
    bugs = _Bugs()
    logging.getLogger("hafleet.transport").addHandler(bugs)

    async def make() -> tr.Transport:
        t = tr.Transport(
            node_id="srv",
            cluster="fuzz",
            key=KEY,
            bind_host="127.0.0.1",
            port=0,
            advertise=None,
            on_frame=lambda peer, obj: received.append(obj),
            handshake_timeout=2.0,
        )
        await t.start()
        return t

    server = lt.run(make())
    try:
        yield lt, server, received, bugs
    finally:
        lt.run(server.stop())
        lt.close()
        logging.getLogger("hafleet.transport").removeHandler(bugs)


def handshake_prefix(kind: str) -> bytes:
    nonce = secrets.token_bytes(32)
    if kind == "none":
        return b""
    if kind == "hello":
        return (42).to_bytes(4, "big") + tr.PROTOCOL + nonce
    # a handshake with a made-up proof
    return (42).to_bytes(4, "big") + tr.PROTOCOL + nonce + (32).to_bytes(4, "big") + nonce


@given(st.sampled_from(["none", "hello", "proof"]), st.binary(max_size=300))
@SLOW_FUZZ
def test_fuzz_transport_server_stream(
    transport_server: tuple[LoopThread, tr.Transport, list[object], _Bugs],
    prefix: str,
    junk: bytes,
) -> None:
    """Arbitrary bytes on a real connection: the server closes it, logs no internal error,
    delivers nothing, and stays up."""
    _, server, received, bugs = transport_server
    before = len(received)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        with contextlib.suppress(OSError):
            s.sendall(handshake_prefix(prefix) + junk)
            s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        got = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(4096):
                got += chunk
    assert len(got) <= 78, "the server sent more than its handshake frame"
    assert len(received) == before
    assert not bugs.records, [r.getMessage() for r in bugs.records]


def test_transport_server_still_serves_after_fuzz(
    transport_server: tuple[LoopThread, tr.Transport, list[object], _Bugs],
) -> None:
    lt, server, received, bugs = transport_server

    async def talk() -> None:
        client = tr.Transport(
            node_id="cli",
            cluster="fuzz",
            key=KEY,
            bind_host="127.0.0.1",
            port=0,
            advertise=None,
            on_frame=lambda peer, obj: None,
        )
        await client.start()
        try:
            assert client.send(f"127.0.0.1:{server.port}", {"k": "ping"})
            async with asyncio.timeout(10):
                while {"k": "ping"} not in received:
                    await asyncio.sleep(0.01)
        finally:
            await client.stop()

    lt.run(talk())
    assert not bugs.records


# ---- the Raft message codec -----------------------------------------------------------------


def decode_or_codec_error(data: bytes) -> Message | None:
    try:
        m = decode_message(data)
    except CodecError:
        return None
    assert decode_message(encode_message(m)) == m  # what decodes re-encodes to itself
    return m


GOOD = [
    encode_message(Message(MessageType.HEARTBEAT, to="n2", frm="n1", term=3, commit=7)),
    encode_message(
        Message(
            MessageType.APP,
            to="n2",
            frm="n1",
            term=5,
            log_term=4,
            index=9,
            entries=(Entry(5, 10, data=b"x" * 8), Entry(5, 11)),
            commit=9,
        )
    ),
]


@given(st.binary(max_size=300))
@FUZZ
def test_fuzz_decode_message_bytes(data: bytes) -> None:
    decode_or_codec_error(data)


@given(st.sampled_from(GOOD).flatmap(mutated))
@FUZZ
def test_fuzz_decode_message_mutated(data: bytes) -> None:
    decode_or_codec_error(data)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.sampled_from([0, 1, 2, 3, 7, 255, (1 << 64) - 1])
    | st.text(max_size=6)
    | st.binary(max_size=8)
)
wire_fields = scalars | st.lists(scalars | st.lists(scalars, min_size=3, max_size=5), max_size=3)


@given(st.lists(wire_fields, min_size=11, max_size=13))
@FUZZ
def test_fuzz_decode_message_structured(fields: list[Any]) -> None:
    decode_or_codec_error(msgpack.packb(fields))


# ---- the HTTP API ---------------------------------------------------------------------------

TOKEN = secrets.token_hex(32)


class StubAgent:
    """What server/api.py uses of an Agent: a leader with a real StateMachine, no Raft."""

    def __init__(self) -> None:
        self.cfg = SimpleNamespace(max_body_bytes=64 << 10, election_timeout_ms=300, quota_bytes=0)
        self.token = TOKEN.encode()
        self.id = "stub"
        self.state = StateMachine()
        self.raw = None
        self.metrics = None
        self.transport = None
        self.started_at = time.monotonic()
        self.next_index = 1

    def is_leader(self) -> bool:
        return True

    def leader_id(self) -> str:
        return self.id

    def leader_api(self) -> str | None:
        return None

    def in_config(self, node_id: str) -> bool:
        return False

    def write_timeout(self) -> float:
        return 1.0

    async def write(self, data: bytes, on_applied: Any = None) -> dict[str, Any]:
        from hafleet_agent.node.errors import StateErrorResult

        res = self.state.apply(self.next_index, data)
        self.next_index += 1
        if on_applied is not None:  # as the driver does: at the apply, before the return
            on_applied(res)
        if not res.ok:
            raise StateErrorResult(res.error)
        return res.result or {}

    async def read_barrier(self) -> None:
        return None

    async def wait_index(self, index: int, timeout: float) -> int:
        return self.state.index

    def status(self) -> dict[str, Any]:
        return {"node_id": self.id, "state": "leader", "applied_index": self.state.index}

    def members_view(self) -> list[dict[str, Any]]:
        return []

    async def add_member(self, *args: Any) -> dict[str, Any]:
        return {}

    async def remove_member(self, *args: Any) -> dict[str, Any]:
        return {}

    async def hand_over(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module")
def api_server() -> Iterator[tuple[StubAgent, int]]:
    from hafleet_agent.server import build_app
    from hafleet_agent.server.conn import Runner, serve

    lt = LoopThread()
    agent = StubAgent()

    async def make() -> tuple[Runner, int]:
        app, _ = build_app(agent)  # type: ignore[arg-type]
        runner = await serve(app, "127.0.0.1", 0)
        return runner, runner.port

    runner, port = lt.run(make())
    try:
        yield agent, port
    finally:
        lt.run(runner.cleanup())
        lt.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(["value", "id", "raft_addr", "api_addr", "to", "evil"]), json_values
    ).map(lambda v: json.dumps(v).encode()),
)
routes = st.sampled_from(
    [
        ("PUT", "/v1/kv/{k}"),
        ("GET", "/v1/kv/{k}"),
        ("DELETE", "/v1/kv/{k}"),
        ("POST", "/v1/members"),
        ("DELETE", "/v1/members/{k}"),
        ("POST", "/v1/leadership/transfer"),
        ("GET", "/v1/watch"),
        ("GET", "/v1/status"),
        ("PATCH", "/v1/kv/{k}"),
        ("GET", "/v1/{k}"),
    ]
)
query_values = st.text(max_size=8) | st.integers(-5, 1 << 70).map(str)
queries = st.dictionaries(
    st.sampled_from(["cas", "stale", "index", "wait", "drain_timeout"]), query_values, max_size=3
)
tokens = st.sampled_from(["good", "none", "wrong", "basic"])
ALLOWED = {200, 400, 401, 404, 405, 409, 413, 503, 504}


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text.encode("utf-8", "surrogatepass"), safe="/")


@given(routes, st.text(min_size=1, max_size=40), queries, bodies, tokens)
@SLOW_FUZZ
def test_fuzz_api_input(
    api_server: tuple[StubAgent, int],
    route: tuple[str, str],
    key: str,
    query: dict[str, str],
    body: bytes | None,
    token: str,
) -> None:
    agent, port = api_server
    method, pattern = route
    path = pattern.format(k=_quote(key))
    if query:
        path += "?" + "&".join(f"{k}={_quote(v)}" for k, v in query.items())
    headers = {"Content-Type": "application/json"}
    if token != "none":
        headers["Authorization"] = {
            "good": f"Bearer {TOKEN}",
            "wrong": "Bearer " + "0" * 64,
            "basic": f"Basic {TOKEN}",
        }[token]
    index_before = agent.state.index
    snapshot_before = agent.state.snapshot()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    assert resp.status in ALLOWED, (resp.status, payload[:300])
    if resp.status >= 400:
        answer = json.loads(payload)
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str), payload
        if resp.status != 409:  # a CAS conflict is applied (as a no-op with an error result)
            assert agent.state.snapshot() == snapshot_before
    if token != "good":
        assert (
            resp.status == 401
            or (resp.status == 404 and "/v1/kv/" not in path)
            or (resp.status == 405)
        ), (resp.status, payload[:200])
        assert agent.state.index == index_before


def test_api_still_serves_after_fuzz(api_server: tuple[StubAgent, int]) -> None:
    _, port = api_server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "PUT",
            "/v1/kv/after",
            body=b'{"value": 1}',
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
    finally:
        conn.close()
