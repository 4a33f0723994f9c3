"""A TLS listener's connections that never finish the TLS handshake (listener.py, connection.py
``abort``): the task serving each one ends when the connection is closed, and a stop while
some are in their handshake returns at once.

Before: asyncio's SSL layer takes the socket over in ``start_tls``; when the handshake failed
or timed out, the stream's protocol never heard of the close, and the task waited for it for
ever in ``abort`` (every silent client of the TLS Raft port leaked one; 384 after an 8-s
flood); a stop that cancelled such a task hung until the agent's 20-s stop bound, then the
agent exited 1 ("stopping took longer than 20.0s").
"""

from __future__ import annotations

import asyncio

import pytest
from test_transport import RawClient, make, run, wait_until

from hafleet_agent import ca, listener
from hafleet_agent.tls import TLSConfig

HOST = "127.0.0.1"
CLIENTS = 12  # (at most MAX_PENDING_PER_SOURCE, 16, from one address)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSConfig:
    d = tmp_path_factory.mktemp("pki")
    ca.init_ca(d)
    ca.issue(d, "n1", [HOST])
    return TLSConfig.load(str(d / "ca.crt"), str(d / "n1.crt"), str(d / "n1.key"))


def test_the_tasks_of_tls_handshakes_that_time_out_end(
    tls: TLSConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener, "FIRST_FRAME_TIMEOUT", 0.3)

    async def main() -> None:
        b = make("n1", tls=tls)
        await b.start()
        try:
            clients = [await RawClient.connect(b.port) for _ in range(CLIENTS)]
            for c in clients:  # closed by the listener at its deadline, no answer
                assert await c.closed_by_peer()
                await c.close()
            # every task that served one has ended (they waited for ever in abort)
            await wait_until(lambda: not b._inbound, "the serving tasks to end")
        finally:
            await b.stop()

    run(main())


@pytest.mark.parametrize("sends", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"])
def test_a_stop_while_tls_handshakes_are_under_way_returns_at_once(
    tls: TLSConfig, sends: bytes
) -> None:
    async def main() -> None:
        b = make("n1", tls=tls)
        await b.start()
        clients = [await RawClient.connect(b.port) for _ in range(CLIENTS)]
        for c in clients:
            if sends:
                c.write(sends)  # a ClientHello cut short: the handshake waits for the rest
        await wait_until(lambda: len(b._inbound) == CLIENTS, "the handshakes to start")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with asyncio.timeout(10):  # (hung for ever before: the test's bound)
            await b.stop()
        assert loop.time() - t0 < 1.5, loop.time() - t0
        for c in clients:
            await c.close()

    run(main())
