"""File helpers of the write-ahead log (:mod:`hafleet_agent.wal`): whole writes, directory
fsyncs, creating and locking the data directory, and growing ``raft.log`` by preallocated
zeros. Only the standard library is used."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
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
