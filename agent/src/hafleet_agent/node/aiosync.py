"""A leader's log sync without a thread: Linux AIO's ``fdatasync`` (``IOCB_CMD_FDSYNC``),
its completion read from an eventfd on the event loop.

The leader writes a batch to ``raft.log`` on the loop (a copy into the page cache) and hands
only the ``fdatasync`` to the kernel, which runs it in a worker of its own and signals an
eventfd when it is done; the loop reads that like a socket and goes on with the batch
(``_written``). The writer thread (node/walwriter.py) did the same with a Python thread,
which took the interpreter's lock around each of its system calls: the lock passed between
the loop and the thread a dozen times per write (13 ``futex`` calls per write at 1 client),
and the leader's second append waited for the thread's turn. Measured with 3 members
(docs/benchmarks.md, fourteenth session): the leader's CPU per write (user + system) 1.42 ->
1.17 ms at 1 client; writes at 16 clients 1.06x, at 1 client 1.00-1.03x.

Linux only (``io_setup``, x86-64 and arm64 system call numbers); :func:`open_syncer`
returns None where it is not there (another system, a sandbox that refuses it, no AIO
contexts left), and the writer thread does the sync as before. The kernel reports the sync's
result in the completion: 0, or an errno that fails the storage (fail-stop) as a failed
``fdatasync`` does. Nothing is acknowledged before the completion says the batch is durable.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import platform
import sys
from collections.abc import Callable

log = logging.getLogger("hafleet.agent")

# The AIO system calls by machine: io_setup, io_destroy, io_getevents, io_submit.
_SYSCALLS = {
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
}
_IOCB_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1
_MAX_EVENTS = 4

Done = Callable[[OSError | None], None]


class _Iocb(ctypes.Structure):
    """``struct iocb`` (linux/aio_abi.h) on a little-endian machine."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def open_syncer(loop: asyncio.AbstractEventLoop) -> AioSyncer | None:
    """An :class:`AioSyncer` on ``loop``, or None where Linux AIO cannot be used (logged)."""
    numbers = _SYSCALLS.get(platform.machine())
    if not sys.platform.startswith("linux") or numbers is None or sys.byteorder != "little":
        return None
    try:
        return AioSyncer(loop, numbers)
    except (OSError, AttributeError, NotImplementedError) as exc:
        log.info("log syncs go through the writer thread: no Linux AIO here (%s)", exc)
        return None


class AioSyncer:
    """One ``fdatasync`` at a time through Linux AIO; its ``done(error)`` runs on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, numbers: tuple[int, ...]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._setup, self._destroy, self._getevents, self._submit = numbers
        self._ctx = ctypes.c_ulong(0)
        if self._syscall(self._setup, _MAX_EVENTS, ctypes.byref(self._ctx)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_setup: {os.strerror(err)}")
        self._efd = -1
        try:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            loop.add_reader(self._efd, self._completed)
        except BaseException:  # nothing is left open when this fails
            self._syscall(self._destroy, self._ctx)
            if self._efd >= 0:
                os.close(self._efd)
            raise
        self._iocb = _Iocb()
        self._iocbs = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(self._iocb))
        self._events = (_IoEvent * _MAX_EVENTS)()
        self._no_wait = _Timespec(0, 0)
        self._done: Done | None = None
        self._loop = loop

    def fdatasync(self, fd: int, done: Done) -> None:
        """Start ``fdatasync(fd)``; ``done(None)`` on the loop once the data is durable, or
        ``done(OSError)`` if the sync failed. OSError here if it could not be started (then
        ``done`` is never called)."""
        if self._done is not None:
            raise RuntimeError("a log sync is already under way")
        cb = self._iocb
        ctypes.memset(ctypes.byref(cb), 0, ctypes.sizeof(cb))
        cb.aio_lio_opcode = _IOCB_CMD_FDSYNC
        cb.aio_fildes = fd
        cb.aio_flags = _IOCB_FLAG_RESFD
        cb.aio_resfd = self._efd
        self._done = done
        if self._syscall(self._submit, self._ctx, 1, self._iocbs) != 1:
            self._done = None
            err = ctypes.get_errno()
            raise OSError(err, f"io_submit: {os.strerror(err)}")

    def _completed(self) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return  # nothing completed yet
        for _ in range(3):  # a zero timeout: EINTR is all that could make it fail
            wait = ctypes.byref(self._no_wait)
            n = self._syscall(self._getevents, self._ctx, 0, _MAX_EVENTS, self._events, wait)
            if n >= 0:
                break
        else:  # the result cannot be read: the sync is not known to be done (fail-stop)
            err = ctypes.get_errno()
            done, self._done = self._done, None
            if done is not None:
                done(OSError(err, f"io_getevents: {os.strerror(err)}"))
            return
        for i in range(n):
            res = self._events[i].res
            done, self._done = self._done, None
            if done is not None:
                done(None if res == 0 else OSError(-res, os.strerror(-res)))

    def close(self) -> None:
        """Stop: a sync under way ends first (``io_destroy`` waits for it); its ``done`` is
        not called."""
        if self._efd < 0:
            return
        self._done = None
        try:
            self._loop.remove_reader(self._efd)
        except (RuntimeError, ValueError):
            pass  # the loop is closed: nothing reads the eventfd any more
        self._syscall(self._destroy, self._ctx)
        os.close(self._efd)
        self._efd = -1
