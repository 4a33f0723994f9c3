"""``hafleet-agent run`` that loses power in the middle of a group commit: at the Nth fsync of
its ``raft.log`` (fsync or fdatasync) - the batch written, not yet synced - it throws away
what that sync would have made durable (a random prefix of the batch survives: a torn write,
or nothing of it; the rest reads as the zeros of the preallocated space), as a power cut
would, then SIGKILLs itself. For test_group_commit_crash.py only.

Usage: ``python crash_agent.py KILL_AT SEED MODE run --node-id ... (the flags of
hafleet-agent run)``. MODE ``power`` cuts the power as above; ``eio``: that fsync and every
later one of the log fail with EIO instead (after dropping the batch the same way: the
kernel may have lost the dirty pages), and the agent must stop by itself (fail-stop); it
says how many append answers were queued at that sync, and any that left after it (a
follower queues them while its write is under way, node/walwriter.py: none may leave).
``aio-power`` and ``aio-eio`` do the same to the syncs a leader hands to Linux AIO
(node/aiosync.py: the batch written on the loop, its ``fdatasync`` not yet submitted); the
EIO then comes back in the sync's completion. Only a leader's batches go that way.
Everything the agent acknowledged before that point must still be there after a restart: it
may acknowledge a write only once the fsync of the batch holding it returned.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import sys
from collections.abc import Iterable

import msgpack

from hafleet_agent import connection, wal
from hafleet_agent.cli import main
from hafleet_agent.codec import decode_message
from hafleet_agent.node import aiosync
from hafleet_agent.raft.types import MessageType

KILL_AT = int(sys.argv[1])
RNG = random.Random(int(sys.argv[2]))
MODE = sys.argv[3]
assert MODE in ("power", "eio", "aio-power", "aio-eio"), MODE
AIO = MODE.startswith("aio-")
_unsynced: dict[int, tuple[int, int]] = {}  # fd -> (offset, bytes) written since its last sync
_log_syncs = 0


def _is_log(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith("/" + wal.LOG_FILE)
    except OSError:
        return False


_pwrite_all = wal.pwrite_all


def _recording_pwrite_all(fd: int, data: bytes, offset: int) -> None:
    _pwrite_all(fd, data, offset)
    start, length = _unsynced.get(fd, (offset, 0))
    _unsynced[fd] = (start, offset + len(data) - start)


def _at_sync(fd: int) -> None:
    """A sync of ``fd`` starts: counted when it is the log's; at the KILL_AT-th, what it
    would make durable is lost, then SIGKILL (power) or OSError EIO (eio)."""
    global _log_syncs, _failed
    if _is_log(fd) and _unsynced.get(fd, (0, 0))[1]:
        _log_syncs += 1
        if _log_syncs >= KILL_AT:
            start, unsynced = _unsynced[fd]
            kept = RNG.randrange(0, unsynced)  # a torn prefix, maybe empty
            # What the sync would have made durable is lost: the preallocated space holds
            # zeros again past the kept prefix (and a file that grew keeps zeros there too).
            os.pwrite(fd, bytes(unsynced - kept), start + kept)
            os.fsync(fd)
            sys.stderr.write(
                f"crash_agent: {MODE} at log sync {_log_syncs}: kept {kept} of the {unsynced} "
                f"bytes written at offset {start} and not synced\n"
            )
            sys.stderr.flush()
            if MODE.endswith("eio"):
                _unsynced.pop(fd)  # the next batch is cut again
                _failed = True
                queued = sum(_answers(p.queue) for p in _peers)
                sys.stderr.write(f"crash_agent: {queued} append answer(s) queued at the sync\n")
                sys.stderr.flush()
                raise OSError(errno.EIO, "injected fsync failure")
            os.kill(os.getpid(), signal.SIGKILL)


def _sync(fd: int) -> None:
    """The storage's fsync and fdatasync (an injected fsync_fn stands for both)."""
    _at_sync(fd)
    os.fsync(fd)
    _unsynced.pop(fd, None)


_aio_fdatasync = aiosync.AioSyncer.fdatasync
_aio_used = False


def _cut_aio_fdatasync(self: aiosync.AioSyncer, fd: int, done: aiosync.Done) -> None:
    global _aio_used
    if not _aio_used:
        _aio_used = True
        sys.stderr.write("crash_agent: the leader's log syncs go through Linux AIO\n")
        sys.stderr.flush()
    try:
        _at_sync(fd)
    except OSError as exc:  # eio: the completion reports it
        asyncio.get_running_loop().call_soon(done, exc)
        return
    _unsynced.pop(fd, None)  # one batch at a time: the next write starts a new range
    _aio_fdatasync(self, fd, done)


# A follower queues its answers while its log write is under way (node/walwriter.py's
# write_inline): at a failed sync they must be taken back. Every frame written after it is
# looked at, and an append answer among them said.
_failed = False
_peers: set[connection.Outbound] = set()


def _answers(payloads: Iterable[bytes]) -> int:
    n = 0
    for payload in payloads:
        frame = msgpack.unpackb(payload, raw=False)
        if isinstance(frame, dict) and frame.get("k") == "raft":
            n += decode_message(frame["m"]).type is MessageType.APP_RESP
    return n


_offer = connection.Outbound.offer
_write_queued = connection.Outbound.write_queued


def _offer_seen(self: connection.Outbound, payload: bytes) -> bool:
    _peers.add(self)
    return _offer(self, payload)


def _write_watched(self: connection.Outbound, conn: connection.Conn) -> None:
    if _failed and (n := _answers(self.queue)):
        sys.stderr.write(f"crash_agent: {n} append answer(s) left after the failed sync\n")
        sys.stderr.flush()
    _write_queued(self, conn)


connection.Outbound.offer = _offer_seen  # type: ignore[method-assign]
connection.Outbound.write_queued = _write_watched  # type: ignore[method-assign]

_open = wal.DiskStorage.open


def _open_with_hook(data_dir: str, **kw: object) -> wal.DiskStorage:
    if not AIO:  # an injected sync function keeps every batch in the writer thread
        kw.setdefault("fsync_fn", _sync)
    return _open(data_dir, **kw)  # type: ignore[arg-type]


wal.pwrite_all = _recording_pwrite_all  # type: ignore[assignment]
wal.DiskStorage.open = _open_with_hook  # type: ignore[assignment,method-assign]
aiosync.AioSyncer.fdatasync = _cut_aio_fdatasync  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[4:]))
