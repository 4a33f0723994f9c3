"""The one thread that writes the Raft log (``raft-wal``): a job in, its completion back on
the event loop in one hop.

``run_in_executor`` on a one-thread pool did the same with more machinery on the write path:
a pool future wrapped in an asyncio future whose completion is scheduled on the loop, then
the done callback scheduled again (two loop cycles between the fsync and the answers). Here
the thread calls ``loop.call_soon_threadsafe(done, error)`` itself: the driver's completion
runs in the next loop cycle. fsync releases the GIL, so the loop goes on meanwhile.

The thread runs under ``SCHED_BATCH`` (Linux): a job handed to it no longer preempts the
event loop's thread at the hand-over. Under the default policy the kernel switched to the
woken writer on the loop's own core, where it found the GIL held by the loop and slept again
(two context switches per batch, ~8 % of the loop's time under 16 clients). Measured with
``bench/ab_agent.py`` (3 rounds of 10 s): 16 clients 2,605 -> 2,786 writes/s, 1 client 560 ->
573, the leader's CPU per write 0.42 -> 0.38 ms."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

_STOP = object()


class WalWriter:
    def __init__(self, name: str = "raft-wal") -> None:
        self._jobs: SimpleQueue[Any] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        fn: Callable[[Any], None],
        arg: Any,
        done: Callable[[BaseException | None], None],
    ) -> None:
        """Run ``fn(arg)`` in the thread, then ``done(None)`` (or ``done(exc)`` if it raised)
        on ``loop``. Jobs run one at a time, in order."""
        self._jobs.put((loop, fn, arg, done))

    def _run(self) -> None:
        batch_policy()
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            loop, fn, arg, done = job
            error: BaseException | None = None
            try:
                fn(arg)
            except BaseException as exc:  # handed to the loop: the driver fails-stop
                error = exc
            try:
                loop.call_soon_threadsafe(done, error)
            except RuntimeError:
                pass  # the loop is closed: nobody waits for this write any more

    def shutdown(self) -> None:
        """Wait for the jobs submitted so far (a write under way ends), then stop."""
        self._jobs.put(_STOP)
        self._thread.join()


def batch_policy() -> None:
    """Put the calling thread under ``SCHED_BATCH`` (same priority, no wake-up preemption)
    where the platform has it and the sandbox allows it; elsewhere it runs as before."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, policy, os.sched_param(0))
