"""The frames of an accepted connection, once its handshake is done, read by a protocol.

The handshake reads through asyncio streams (``listener.py``); after it a stream reader
costs a task wake-up per read: the bytes wake a future, the loop runs the reading task in
its next cycle, which copies them out of the stream's buffer. :class:`FrameReader` takes
over the socket's protocol instead (``transport.set_protocol``) and decodes, checks and
delivers the frames in ``data_received`` itself: the frames of a read reach the node in the
loop cycle that read them, and ``on_read`` (when given) is called once they all have (after
a read that completed at least one frame). The checks are those of ``Transport.read_loop``
(each sealed frame opened and its counter checked, every record of a batch unpacked before
any is delivered); the first violation stops reading and ends :meth:`FrameReader.run` with
it. The stream protocol it replaced gets the connection's end (``connection_lost``), so
closing and waiting for the close work as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .connection import Conn, TransportStats
from .wire import Closed, FrameDecoder, split_batch, unpack_payload

log = logging.getLogger("hafleet.transport")


def deliver_frame(
    conn: Conn,
    body: bytes,
    batched: bool,
    stats: TransportStats,
    on_frame: Callable[[Any, object], None],
) -> None:
    """Open one sealed frame of ``conn`` (its MAC and counter checked: AuthError or
    ProtocolError otherwise, which ends the connection) and hand its payload - or, ``batched``,
    each record of its batch - to ``on_frame``. Every record is checked before any is
    delivered: a batch is taken whole or (a bad record) the connection closes with none of it
    delivered. A failing ``on_frame`` is counted and logged; it does not end the connection.
    The one place that does this, for both readers (FrameReader here, Transport.read_loop)."""
    session, peer = conn.session, conn.peer
    assert session is not None
    payload = session.open(body)
    stats.bytes_received += 4 + len(body)
    objs = (
        [unpack_payload(r) for r in split_batch(payload)] if batched else [unpack_payload(payload)]
    )
    for obj in objs:
        stats.frames_received += 1
        try:
            on_frame(peer, obj)
        except Exception:
            stats.callback_errors += 1
            log.exception("on_frame failed for a frame from %s", conn.describe())


class FrameReader(asyncio.Protocol):
    def __init__(
        self,
        conn: Conn,
        decoder: FrameDecoder,
        batched: bool,
        on_frame: Callable[[Any, object], None],
        stats: TransportStats,
        on_read: Callable[[], None] | None = None,
    ) -> None:
        assert conn.session is not None and conn.peer is not None
        self.conn, self.decoder, self.batched = conn, decoder, batched
        self.on_frame, self.stats, self.on_read = on_frame, stats, on_read
        self.transport: Any = conn.writer.transport
        self.stream: Any = self.transport.get_protocol()  # the stream protocol it replaces
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        """Read until the end of the stream (returns) or a violation (raises it)."""
        reader = self.conn.reader
        if (exc := reader.exception()) is not None:
            raise exc
        # What the stream reader holds already past the hellos (no public way to take it).
        buffered = bytes(reader._buffer)
        reader._buffer.clear()
        self.transport.set_protocol(self)
        try:
            if buffered:
                self.data_received(buffered)
            if reader.at_eof():
                self.eof_received()
            await self.done
        finally:
            self.transport.set_protocol(self.stream)

    def _stop(self, exc: BaseException | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            self.decoder.feed(data)
            delivered = self._deliver()
        except Exception as e:  # a violation: the connection closes with its reason
            self._stop(e)
            return
        if delivered and self.on_read is not None and not self.done.done():
            try:
                self.on_read()  # the read's frames are all delivered
            except Exception:
                self.stats.callback_errors += 1
                log.exception("on_read failed after a read from %s", self.conn.describe())

    def _deliver(self) -> bool:
        """Deliver the whole frames read so far; whether there was one."""
        conn, decoder, stats, on_frame = self.conn, self.decoder, self.stats, self.on_frame
        delivered = False
        while (body := decoder.next_frame()) is not None:
            deliver_frame(conn, body, self.batched, stats, on_frame)
            delivered = True
            if self.done.done():
                break  # stopped by a callback (the transport is stopping)
        return delivered

    def eof_received(self) -> bool:
        if not self.done.done():
            try:
                self.decoder.end()
                self._stop(None)
            except Closed as e:
                if type(e) is Closed:  # a clean end of stream between frames
                    log.debug("%s closed the connection", self.conn.describe())
                    self._stop(None)
                else:
                    self._stop(e)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self.eof_received()  # an end without an EOF first: judged the same way
        else:
            self._stop(exc)
        self.stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self.stream.pause_writing()

    def resume_writing(self) -> None:
        self.stream.resume_writing()
