"""Snapshots larger than one frame, sent in chunks over the agents' transport.

The Raft core hands the driver an InstallSnapshot message (``MsgSnap``) that holds the whole
state. One frame carries at most ``max_frame`` bytes (64 MiB), so a bigger snapshot cannot
travel as one Raft frame. The agent intercepts such a message on its way out
(:meth:`SnapshotSender.send`) and streams the snapshot's data as a sequence of
``snap_chunk`` frames; the receiver writes them to a file in its data dir, checks the
checksum of the whole and only then hands its core the very ``MsgSnap`` the leader's core
made (:class:`SnapshotReceiver`). The core itself knows nothing of chunks.
docs/transport.md ("Snapshots larger than a frame") explains the choices.

The ``snap_chunk`` and ``snap_ack`` frames are built and checked in
:mod:`hafleet_agent.snapframes`, whose docstring is their format.

Sending never blocks the event loop for long: the checksum is computed once per snapshot
(index, term) in a thread and cached; each chunk is a 1 MiB slice queued only when the
destination's transport queue holds less than one chunk, so heartbeats and appends to that
peer wait behind at most about two chunks; the sender yields to the loop between chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .raft.types import ConfState, Message, MessageType, Snapshot, SnapshotMeta
from .snapframes import (
    ACK_KIND,
    CHUNK_KIND,
    MAX_CHUNK_BYTES,
    ChunkStart,
    ack_frame,
    check_chunk,
    check_start,
    chunk_frame,
)

__all__ = [
    "ACK_KIND",
    "CHUNK_BYTES",
    "CHUNK_KIND",
    "PART_FILE",
    "SnapshotReceiver",
    "SnapshotSender",
]

log = logging.getLogger("hafleet.snapxfer")

CHUNK_BYTES = 1 << 20
"""Snapshot data per chunk frame."""
MAX_TOTAL_BYTES = 1 << 40
"""The largest snapshot a receiver takes (a sanity bound; the quota keeps states far below)."""
INLINE_MARGIN = 64 << 10
"""Room left in a frame for the message around the snapshot data and its member ids (which
:meth:`SnapshotSender.fits_one_frame` counts besides): a few hundred bytes are needed."""
PART_FILE = "snapshot.recv.part"
"""The file a snapshot being received is written to, in the data dir."""
DISK_RESERVE_BYTES = 64 << 20
"""Free space a receiver keeps beyond the snapshot's size (for the Raft log)."""
_MAX_REASON = 200

Spawn = Callable[[Coroutine[Any, Any, None], str], None]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@dataclass
class _Outgoing:
    xid: str
    to: str
    addr: str
    index: int
    snap_term: int
    term: int
    started: float
    task: asyncio.Task[None] | None = None
    sent_all: bool = False


class _Failed(Exception):
    """A transfer cannot go on; the message is the reason that is logged."""


class SnapshotSender:
    """The leader's side: one transfer at a time per destination.

    ``send(addr, m)`` is called by the driver for every ``MsgSnap`` too large for one frame.
    A message for a snapshot already on its way to that node is ignored (the core asks again
    each time it gives the previous attempt up, every election timeout); a message for
    another snapshot replaces the transfer. ``still_leader(to, term)`` is asked before each
    chunk: a leader that lost its term, or a destination that left the group, ends the
    transfer quietly. ``report_failure(to)`` is called (on the loop, never inside the
    driver's ready loop) when a transfer fails: the receiver refused it, it made no progress
    for ``stall_timeout`` seconds, or no ``snap_ack`` came ``ack_timeout`` seconds after the
    last chunk was queued. After a failure that destination gets no new transfer for
    ``retry_backoff`` seconds (doubling up to ``max_backoff`` while failures repeat), so a
    receiver that cannot take the snapshot does not get the whole state sent every
    heartbeat.
    """

    def __init__(
        self,
        *,
        transport: Any,
        cluster_id: Callable[[], str | None],
        spawn: Spawn,
        still_leader: Callable[[str, int], bool],
        report_failure: Callable[[str], None],
        chunk_bytes: int = CHUNK_BYTES,
        inline_max: int | None = None,
        stall_timeout: float = 20.0,
        ack_timeout: float = 60.0,
        retry_backoff: float = 1.0,
        max_backoff: float = 30.0,
        poll_interval: float = 0.005,
    ) -> None:
        if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in 1..{MAX_CHUNK_BYTES}")
        self._transport = transport
        self._cluster_id = cluster_id
        self._spawn = spawn
        self._still_leader = still_leader
        self._report_failure = report_failure
        self.chunk_bytes = chunk_bytes
        self.inline_max = (
            inline_max if inline_max is not None else transport.max_frame - INLINE_MARGIN
        )
        self.stall_timeout = stall_timeout
        self.ack_timeout = ack_timeout
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self.poll_interval = poll_interval
        self._active: dict[str, _Outgoing] = {}
        self._backoff: dict[str, tuple[float, float]] = {}  # to -> (until, last delay)
        self._sums: dict[tuple[int, int], bytes] = {}
        self._last_end = float("-inf")  # when a transfer last completed or failed
        self.stats = {
            "started": 0,
            "completed": 0,
            "failed": 0,
            "chunks_sent": 0,
            "bytes_sent": 0,
            "checksums": 0,
        }

    def fits_one_frame(self, snap: Snapshot) -> bool:
        """True when the snapshot may travel inside one Raft frame, as before chunking (an
        agent of an earlier version takes nothing else)."""
        conf = snap.meta.conf_state
        ids = sum(len(n.encode()) + 4 for n in (*conf.voters, *conf.learners))
        return len(snap.data) + ids <= self.inline_max

    def active(self, to: str) -> bool:
        return to in self._active

    def busy(self, settle: float = 10.0) -> bool:
        """True while a transfer is on its way, and for ``settle`` seconds after the last one
        ended: the leader then holds its next compaction back (within bounds), so that the
        entries after the snapshot are still there for the member to catch up with, instead
        of a newer snapshot that would start the transfer over."""
        return bool(self._active) or time.monotonic() - self._last_end < settle

    def send(self, addr: str, m: Message) -> None:
        """Start streaming ``m.snapshot`` to ``m.to`` at ``addr`` (see the class docstring)."""
        assert m.type is MessageType.SNAP and m.snapshot is not None and m.to is not None
        to, meta = m.to, m.snapshot.meta
        now = time.monotonic()
        cur = self._active.get(to)
        if cur is not None:
            if cur.index == meta.index and cur.snap_term == meta.term and cur.addr == addr:
                return  # already on its way
            log.info("snapshot %d to %s replaced by snapshot %d", cur.index, to, meta.index)
            self._drop(cur)
        until, _ = self._backoff.get(to, (0.0, 0.0))
        if now < until:
            log.debug("snapshot to %s: waiting %.1fs after a failed transfer", to, until - now)
            return
        x = _Outgoing(
            xid=secrets.token_hex(8),
            to=to,
            addr=addr,
            index=meta.index,
            snap_term=meta.term,
            term=m.term,
            started=now,
        )
        self._active[to] = x
        self.stats["started"] += 1
        self._spawn(self._run(x, m.snapshot), f"snapshot-to-{to}")

    def on_ack(self, frm: str, obj: dict[str, Any]) -> None:
        """A ``snap_ack`` from ``frm``."""
        x = self._active.get(frm)
        if x is None or obj.get("x") != x.xid:
            return  # an answer about a transfer we gave up already
        if obj.get("ok") is True:
            self._drop(x)
            self._last_end = time.monotonic()
            self._backoff.pop(frm, None)
            self.stats["completed"] += 1
            log.info(
                "snapshot %d delivered to %s in %.1fs", x.index, frm, time.monotonic() - x.started
            )
        else:
            reason = str(obj.get("reason") or "no reason given")[:_MAX_REASON]
            self._fail(x, f"refused by the receiver: {reason}")

    def cancel(self, to: str) -> None:
        x = self._active.get(to)
        if x is not None:
            self._drop(x)

    # ---- internals -------------------------------------------------------------------------
    def _drop(self, x: _Outgoing) -> None:
        if self._active.get(x.to) is x:
            del self._active[x.to]
        if x.task is not None and x.task is not asyncio.current_task():
            x.task.cancel()

    def _fail(self, x: _Outgoing, reason: str) -> None:
        if self._active.get(x.to) is not x:
            return
        self._drop(x)
        self._last_end = time.monotonic()
        self.stats["failed"] += 1
        _, last = self._backoff.get(x.to, (0.0, 0.0))
        delay = min(self.max_backoff, last * 2 if last else self.retry_backoff)
        self._backoff[x.to] = (time.monotonic() + delay, delay)
        log.warning(
            "snapshot %d to %s failed: %s; retrying in %.1fs at the earliest",
            x.index,
            x.to,
            reason,
            delay,
        )
        if self._still_leader(x.to, x.term):
            self._report_failure(x.to)

    async def _checksum(self, snap: Snapshot) -> bytes:
        key = (snap.meta.index, snap.meta.term)
        digest = self._sums.get(key)
        if digest is None:
            # hashlib drops the GIL for large buffers: the loop keeps running meanwhile.
            digest = await asyncio.to_thread(lambda: hashlib.sha256(snap.data).digest())
            self._sums = {key: digest}  # only the latest snapshot is ever sent
            self.stats["checksums"] += 1
        return digest

    async def _run(self, x: _Outgoing, snap: Snapshot) -> None:
        if self._active.get(x.to) is not x:
            # Replaced (or cancelled) before this task first ran, so before _drop could
            # cancel it: a newer snapshot asked in the same loop cycle. Send nothing.
            return
        x.task = asyncio.current_task()
        try:
            await self._stream(x, snap)
        except asyncio.CancelledError:
            raise
        except _Failed as exc:
            self._fail(x, str(exc))
        except Exception as exc:  # a bug: fail this transfer, never the agent
            log.exception("snapshot %d to %s: internal error", x.index, x.to)
            self._fail(x, f"internal error: {exc!r}")

    async def _stream(self, x: _Outgoing, snap: Snapshot) -> None:
        loop = asyncio.get_running_loop()
        digest = await self._checksum(snap)
        data = memoryview(snap.data)
        total = len(data)
        conf = snap.meta.conf_state
        tr = self._transport
        log.info(
            "sending snapshot %d (%s) to %s in chunks of %s",
            x.index,
            _mib(total),
            x.to,
            _mib(self.chunk_bytes),
        )
        off = 0
        progress_at = loop.time()
        last_queued = tr.queued_bytes(x.addr)
        while off < total or (off == 0 and total == 0):
            if not self._still_leader(x.to, x.term):
                log.info("snapshot %d to %s: abandoned (no longer its leader)", x.index, x.to)
                self._drop(x)
                return
            queued = tr.queued_bytes(x.addr)
            if queued < last_queued:
                progress_at = loop.time()  # the peer reads
            last_queued = queued
            if queued >= self.chunk_bytes:  # keep at most about one chunk waiting
                self._check_stall(loop, progress_at)
                await asyncio.sleep(self.poll_interval)
                continue
            n = min(self.chunk_bytes, total - off)
            head = (self._cluster_id(), x.xid, x.term, x.index, x.snap_term, total, digest)
            chunk = data[off : off + n].tobytes()
            frame = chunk_frame(*head, off, chunk, conf if off == 0 else None)
            if not tr.send(x.addr, frame):
                self._check_stall(loop, progress_at)
                await asyncio.sleep(self.poll_interval * 10)
                continue
            off += n
            progress_at = loop.time()
            last_queued = tr.queued_bytes(x.addr)
            self.stats["chunks_sent"] += 1
            self.stats["bytes_sent"] += n
            if total == 0:
                break
            await asyncio.sleep(0)  # let heartbeats and everything else run between chunks
        x.sent_all = True
        log.info(
            "snapshot %d to %s: all %d chunks queued in %.1fs; waiting for its answer",
            x.index,
            x.to,
            max(1, -(-total // self.chunk_bytes)),
            time.monotonic() - x.started,
        )
        await asyncio.sleep(self.ack_timeout)
        raise _Failed(f"no answer within {self.ack_timeout:g}s after the last chunk")

    def _check_stall(self, loop: asyncio.AbstractEventLoop, progress_at: float) -> None:
        if loop.time() - progress_at > self.stall_timeout:
            raise _Failed(f"no progress for {self.stall_timeout:g}s (peer unreachable or stalled)")


@dataclass
class _Incoming:
    xid: str
    peer: Any  # the sender's PeerInfo (node_id, addr)
    frm: str
    addr: str
    head: ChunkStart  # what the first chunk said of the whole
    fd: int | None
    started: float
    received: int = 0


class SnapshotReceiver:
    """The follower's side: ``on_chunk(peer, obj)`` for each ``snap_chunk`` (``peer``: the
    transport's PeerInfo of the sender, authenticated).

    One transfer at a time: a chunk at offset 0 starts a new one (and drops any other), a
    chunk that is not the next one ends the transfer with a refusal. The chunks go to
    ``PART_FILE`` in ``data_dir`` (never fsync'd: the core's snapshot is made durable by the
    storage, as any received snapshot). After the last chunk the file is read back and its
    SHA-256 compared off the loop; ``prepare(snapshot)``, when given, runs in a worker thread
    too (the agent writes the storage's snapshot file there); then ``deliver(peer, msg,
    prepared)`` hands the rebuilt ``MsgSnap`` (and what ``prepare`` returned, or None) to
    the core and ``reply(addr, body)`` sends the ``snap_ack``.
    """

    def __init__(
        self,
        *,
        node_id: str,
        data_dir: Path,
        deliver: Callable[[Any, Message, Path | None], None],
        reply: Callable[[str, dict[str, Any]], None],
        spawn: Spawn,
        prepare: Callable[[Snapshot], Path] | None = None,
        max_total: int = MAX_TOTAL_BYTES,
        free_bytes: Callable[[Path], int] | None = None,
    ) -> None:
        self.node_id = node_id
        self.path = Path(data_dir) / PART_FILE
        self._deliver = deliver
        self._reply = reply
        self._spawn = spawn
        self._prepare = prepare
        self.max_total = max_total
        self._free_bytes = free_bytes or _free_bytes
        self._cur: _Incoming | None = None
        self._refused: list[str] = []  # transfer ids refused already: one answer each
        self.stats = {"completed": 0, "refused": 0, "bytes_received": 0}
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a transfer cut short by a restart

    def close(self) -> None:
        self._discard()

    def on_chunk(self, peer: Any, obj: dict[str, Any]) -> None:
        """Take one chunk; raises ValueError/TypeError/KeyError for a malformed frame."""
        frm, addr = peer.node_id, peer.addr
        xid, off, data = check_chunk(obj)
        cur = self._cur
        if off == 0:
            if cur is not None:
                if cur.xid == xid:
                    raise ValueError("a transfer started twice")
                log.info(
                    "snapshot %d from %s: dropped for a new transfer from %s",
                    cur.head.index,
                    cur.frm,
                    frm,
                )
                self._discard()
            cur = self._start(peer, xid, obj)
            if cur is None:
                return
        elif cur is None or cur.xid != xid or cur.frm != frm:
            self._refuse(frm, addr, xid, obj.get("index"), "a chunk of no transfer in progress")
            return
        elif off != cur.received:
            self._abort(f"chunk at offset {off}, expected {cur.received} (a chunk was lost)")
            return
        if cur.received + len(data) > cur.head.total or (not data and cur.head.total):
            self._abort(f"chunk of {len(data)} bytes at {off} overruns the total {cur.head.total}")
            return
        try:
            assert cur.fd is not None
            _write_all(cur.fd, data)
        except OSError as exc:
            self._abort(f"cannot write {self.path}: {exc.strerror or exc}")
            return
        cur.received += len(data)
        self.stats["bytes_received"] += len(data)
        if cur.received == cur.head.total:
            os.close(cur.fd)
            cur.fd = None
            self._spawn(self._finish(cur), f"snapshot-from-{frm}")

    # ---- internals -------------------------------------------------------------------------
    def _start(self, peer: Any, xid: str, obj: dict[str, Any]) -> _Incoming | None:
        frm, addr = peer.node_id, peer.addr
        head = check_start(obj)
        total = head.total
        cur = _Incoming(xid, peer, frm, addr, head, fd=None, started=time.monotonic())
        if total > self.max_total:
            self._refuse(frm, addr, xid, head.index, f"{total} bytes is over the limit")
            return None
        # The part file, then the snapshot file the storage writes (the part file is gone
        # by then) must fit, with room to spare for the Raft log: a full disk would make its
        # next fsync fail, and that is fail-stop.
        try:
            free = self._free_bytes(self.path.parent)
        except OSError as exc:
            free = None
            log.debug("cannot tell the free space of %s: %s", self.path.parent, exc)
        if free is not None and total + DISK_RESERVE_BYTES > free:
            self._refuse(
                frm,
                addr,
                xid,
                head.index,
                f"not enough disk space: {_mib(total)} to receive, {_mib(free)} free "
                f"(keeping {_mib(DISK_RESERVE_BYTES)} for the log)",
            )
            return None
        try:
            cur.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._refuse(frm, addr, xid, head.index, f"cannot create {self.path}: {exc}")
            return None
        self._cur = cur
        log.info("receiving snapshot %d (%s) from %s", head.index, _mib(total), frm)
        return cur

    def _discard(self) -> None:
        cur, self._cur = self._cur, None
        if cur is not None and cur.fd is not None:
            os.close(cur.fd)
            cur.fd = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _abort(self, reason: str) -> None:
        cur = self._cur
        assert cur is not None
        self._discard()
        self._refuse(cur.frm, cur.addr, cur.xid, cur.head.index, reason)

    def _refuse(self, frm: str, addr: str, xid: str, index: object, reason: str) -> None:
        if xid in self._refused:
            return  # answered already; the rest of its chunks are dropped quietly
        self._refused = [*self._refused[-15:], xid]
        self.stats["refused"] += 1
        log.warning("snapshot from %s refused: %s", frm, reason)
        self._reply(addr, ack_frame(xid, index, reason))

    async def _finish(self, cur: _Incoming) -> None:
        path = self.path

        def read() -> tuple[bytes, bytes]:
            data = path.read_bytes()
            return data, hashlib.sha256(data).digest()

        try:
            data, digest = await asyncio.to_thread(read)
        except OSError as exc:
            if self._cur is cur:
                self._abort(f"cannot read {path} back: {exc}")
            return
        if self._cur is not cur:
            return  # a newer transfer took its place meanwhile
        self._discard()
        h = cur.head
        if len(data) != h.total or digest != h.digest:
            self._refuse(cur.frm, cur.addr, cur.xid, h.index, "checksum mismatch")
            return
        msg = Message(
            MessageType.SNAP,
            to=self.node_id,
            frm=cur.frm,
            term=h.term,
            snapshot=Snapshot(
                SnapshotMeta(h.index, h.snap_term, ConfState(h.voters, h.learners)), data
            ),
        )
        log.info(
            "received snapshot %d (%s) from %s in %.1fs",
            h.index,
            _mib(h.total),
            cur.frm,
            time.monotonic() - cur.started,
        )
        prepared = None
        if self._prepare is not None:
            # the storage's copy, written and synced off the loop: the driver then only
            # renames it into place when the core hands the snapshot over to be saved
            prepared = await asyncio.to_thread(self._prepare, msg.snapshot)
        self.stats["completed"] += 1
        self._deliver(cur.peer, msg, prepared)
        self._reply(cur.addr, ack_frame(cur.xid, cur.head.index))


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
