"""File helpers of the write-ahead log (:mod:`hafleet_agent.wal`): whole writes, directory
fsyncs, creating and locking the data directory, and growing ``raft.log`` by preallocated
zeros. Only the standard library is used."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .walformat import StorageError

logger = logging.getLogger("hafleet.raft.storage")

FsyncFn = Callable[[int], None]

#: The errnos of a filesystem that cannot preallocate (the log then grows by its writes).
NO_PREALLOC_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS})


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` at the file's position (O_APPEND: its end)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset``, whatever the file's position."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _Writeback:
    """``sync_file_range(SYNC_FILE_RANGE_WRITE)`` through libc (Python's ``os`` has no
    binding): the device starts taking a range of dirty pages now, without waiting, so that
    the ``fdatasync`` after it waits for less. A hint only: where it is not there or fails
    once, it is never tried again, and the sync does it all as before."""

    def __init__(self) -> None:
        self._call: Callable[[int, int, int, int], int] | None = None
        self._errno: Callable[[], int] = lambda: 0
        self._tried = False

    def _load(self) -> None:
        self._tried = True
        if not sys.platform.startswith("linux"):
            return
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        except (OSError, AttributeError):
            return
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
        self._call, self._errno = fn, ctypes.get_errno

    def start(self, fd: int, offset: int, length: int) -> bool:
        """Start writing ``length`` bytes at ``offset`` back; whether it was started."""
        if not self._tried:
            self._load()
        if self._call is None or length <= 0:
            return False
        if self._call(fd, offset, length, _SYNC_FILE_RANGE_WRITE) != 0:
            why = os.strerror(self._errno())
            logger.debug("sync_file_range: %s; the log's syncs do without it", why)
            self._call = None
            return False
        return True


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>
#: Starts a log write's writeback (``_Writeback.start``).
start_writeback = _Writeback().start


def preallocate(fd: int, start: int, end: int) -> None:
    """Make the file at least ``end`` bytes long with its blocks allocated from ``start`` on
    (zeros; ``posix_fallocate``): later writes below ``end`` change no file size, so an
    ``fdatasync`` makes them durable without committing the inode. OSError as raised
    (ENOSPC when the disk is full; an errno of :data:`NO_PREALLOC_ERRNOS` when the
    filesystem cannot do it)."""
    if end > start:
        os.posix_fallocate(fd, start, end - start)


def fsync_dir(path: Path, fsync_fn: FsyncFn) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync_fn(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, fsync_fn: FsyncFn | None) -> None:
    """Create ``path`` and missing parents with mode 0700; fsync each new entry's parent."""
    missing: list[Path] = []
    p = path.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # whatever the umask
        if fsync_fn is not None:
            fsync_dir(d.parent, fsync_fn)


def grow_log(fd: int, alloc: int, end: int, prealloc: int, path: Path) -> tuple[int, int]:
    """Allocate the log (``fd``, ``alloc`` bytes long) up to ``end`` plus ``prealloc`` bytes;
    the new (allocated size, prealloc). On a full disk only up to ``end``: the batch still
    fits, the node stops only when it does not (ENOSPC raised). On a filesystem that cannot
    preallocate, ``prealloc`` becomes 0 (the file grows by its writes from then on)."""
    try:
        preallocate(fd, alloc, end + prealloc)
    except OSError as exc:
        if exc.errno in NO_PREALLOC_ERRNOS:
            logger.warning("%s: cannot preallocate (%s); it grows by its writes", path, exc)
            return alloc, 0
        if exc.errno != errno.ENOSPC:
            raise
        preallocate(fd, alloc, end)
        return end, prealloc
    return end + prealloc, prealloc


def lock_dir(path: Path, lock_name: str) -> int:
    """flock ``path/lock_name`` exclusively, without waiting; the open fd."""
    lock_path = path / lock_name
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(f"{lock_path}: cannot open the lock file: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise StorageError(
            f"{path}: the data directory is in use by another storage (lock {lock_path} is "
            f"held): {exc}"
        ) from exc
    return fd
