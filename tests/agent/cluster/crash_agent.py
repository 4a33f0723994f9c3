"""``hafleet-agent run`` that loses power in the middle of a group commit: at the Nth fsync of
its ``raft.log`` - the batch written, not yet synced - it throws away what that fsync would
have made durable (a random prefix of the batch survives: a torn write, or nothing of it), as
a power cut would, then SIGKILLs itself. For test_group_commit_crash.py only.

Usage: ``python crash_agent.py KILL_AT SEED MODE run --node-id ... (the flags of
hafleet-agent run)``. MODE ``power`` cuts the power as above; ``eio``: that fsync and every
later one of the log fail with EIO instead (after dropping the batch the same way: the
kernel may have lost the dirty pages), and the agent must stop by itself (fail-stop).
Everything the agent acknowledged before that point must still be there after a restart: it
may acknowledge a write only once the fsync of the batch holding it returned.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import sys

from hafleet_agent import wal
from hafleet_agent.cli import main

KILL_AT = int(sys.argv[1])
RNG = random.Random(int(sys.argv[2]))
MODE = sys.argv[3]
assert MODE in ("power", "eio"), MODE
_last_write: dict[int, int] = {}  # fd -> bytes written since its last fsync (not durable)
_log_syncs = 0


def _is_log(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith("/" + wal.LOG_FILE)
    except OSError:
        return False


_write_all = wal._write_all


def _recording_write_all(fd: int, data: bytes) -> None:
    _write_all(fd, data)
    _last_write[fd] = _last_write.get(fd, 0) + len(data)  # a commit-only record is not synced


def _fsync(fd: int) -> None:
    global _log_syncs
    if _is_log(fd) and fd in _last_write:
        _log_syncs += 1
        if _log_syncs >= KILL_AT:
            size = os.fstat(fd).st_size
            unsynced = _last_write[fd]
            keep = size - unsynced + RNG.randrange(0, unsynced)  # a torn prefix, maybe empty
            os.ftruncate(fd, keep)
            sys.stderr.write(
                f"crash_agent: {MODE} at log fsync {_log_syncs}: kept {keep} of "
                f"{size} bytes (the last {unsynced} were not synced)\n"
            )
            sys.stderr.flush()
            if MODE == "eio":
                _last_write.pop(fd)  # the next batch is cut again
                raise OSError(errno.EIO, "injected fsync failure")
            os.kill(os.getpid(), signal.SIGKILL)
    os.fsync(fd)
    _last_write[fd] = 0


_open = wal.DiskStorage.open


def _open_with_hook(data_dir: str, **kw: object) -> wal.DiskStorage:
    kw.setdefault("fsync_fn", _fsync)
    return _open(data_dir, **kw)  # type: ignore[arg-type]


wal._write_all = _recording_write_all  # type: ignore[assignment]
wal.DiskStorage.open = _open_with_hook  # type: ignore[assignment,method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[4:]))
