"""The node's background tasks and its fail-stop: ``Tasks`` runs them (``spawn``: a failure
of a critical task, or a StorageError in any, stops the node; ``supervise``: a loop started
again after a failure, with a back-off); ``exit_later`` is the fail-stop's last resort, a
thread that ends the process when the event loop does not come back."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import math
import os
import random
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ..wal import StorageError

log = logging.getLogger("hafleet.agent")

#: A background task that fails (the sampler, housekeeping, the leader's chores, discovery,
#: founding and joining) is logged and started again after a back-off that doubles from
#: RESTART_MIN_S up to RESTART_MAX_S; one that ran RESTART_RESET_S without failing starts the
#: back-off afresh. Storage failures and the Raft driver's tasks are fail-stop instead.
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
RESTART_RESET_S = 60.0

#: Bound on ``Node.stop`` after a failure (storage): the node must be gone promptly.
FAIL_STOP_S = 6.0
#: After a failure the process is gone this long after at the latest, even if its event loop
#: is blocked (a thread's timer; the stop's own bound needs a running loop).
FAIL_EXIT_S = FAIL_STOP_S + 2.0


class Tasks:
    def __init__(self, stopping: asyncio.Event, fail: Callable[[str], None]) -> None:
        self._stop = stopping
        self._fail = fail
        self.running: list[asyncio.Task[Any]] = []
        #: Failures of the background tasks that were restarted, by task name.
        self.failures: dict[str, int] = {}

    def spawn(self, coro: Any, name: str, *, critical: bool = False) -> None:
        """Run ``coro`` as a task of the node (cancelled by ``cancel_all``). When it fails: a
        critical task, or any StorageError, stops the node (fail-stop); any other failure
        is logged and that is all (loops that must go on run under ``supervise``)."""
        task = asyncio.create_task(coro, name=f"hafleet-{name}")
        task.add_done_callback(lambda t: self._task_done(t, critical))
        self.running.append(task)

    def _task_done(self, task: asyncio.Task[Any], critical: bool = False) -> None:
        with contextlib.suppress(ValueError):
            self.running.remove(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if critical or isinstance(exc, StorageError):
            log.critical("task %s failed: %r; stopping", task.get_name(), exc, exc_info=exc)
            self._fail(f"internal error in {task.get_name()}: {exc}")
        else:
            log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    def supervise(self, run: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``run()`` as a task that is started again whenever it fails (until it returns
        or the node stops)."""
        self.spawn(self._supervised(run, name), name)

    async def _supervised(self, run: Callable[[], Awaitable[None]], name: str) -> None:
        """A failure is logged (the traceback the first time in a row) and ``run`` starts
        again after a back-off of RESTART_MIN_S doubling up to RESTART_MAX_S; a run that
        lasted RESTART_RESET_S starts the back-off afresh. A StorageError is not retried: it
        ends the task, and the node (fail-stop, in _task_done)."""
        loop = asyncio.get_running_loop()
        in_a_row = 0
        while not self._stop.is_set():
            began = loop.time()
            try:
                await run()
                return
            except StorageError:
                raise
            except Exception as exc:
                if loop.time() - began >= RESTART_RESET_S:
                    in_a_row = 0
                delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** min(in_a_row, 16))
                in_a_row += 1
                self.failures[name] = self.failures.get(name, 0) + 1
                log.error(
                    "task %s failed (%d in a row): %r; starting it again in %.1fs",
                    name,
                    in_a_row,
                    exc,
                    delay,
                    exc_info=exc if in_a_row == 1 else None,
                )
            await asyncio.sleep(delay)

    async def cancel_all(self) -> None:
        """Cancel every task and wait until they ended."""
        tasks = list(self.running)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def exit_later(seconds: float, after: str = "a failure") -> threading.Timer:
    """Exit with code 1 in ``seconds`` from a daemon thread, writing every thread's stack to
    stderr first: the last resort of the fail-stop (and of a stop) when the event loop does
    not come back. Writes with ``os.write`` and faulthandler only: a blocked thread may hold
    the logging lock."""

    def leave() -> None:
        os.write(2, f"CRITICAL still running {seconds:g}s after {after}; exiting now\n".encode())
        faulthandler.dump_traceback(all_threads=True)
        os._exit(1)

    timer = threading.Timer(seconds, leave)
    timer.daemon = True
    timer.start()
    return timer


GRID_PHASE_S = random.random()
"""This process's offset of the grid of :func:`on_grid` and of the Raft clock's ticks:
random, so that members sharing a clock (the lab's, the benchmarks', all on one host) do not
tick at the same instants. Ticks in step made two followers whose random election timeouts
drew the same tick count campaign at once: split votes (failover p99 0.44 -> 0.75 s with 3
members in `make bench`)."""


def on_grid(period: float) -> float:
    """Seconds from now to the next instant ``GRID_PHASE_S + k * period`` of the event
    loop's clock.

    The periodic loops (housekeeping, the leader's chores and health marks, the host sampler)
    sleep this long instead of ``period``: their timers then fall due at the same instants,
    and on the Raft clock's ticks (node/ticker.py puts its ticks on the same grid), so one
    wake-up of the process serves them all, not one each (an idle leader woke ~74 times a
    second). A run that took a while still ends on the grid."""
    now = asyncio.get_running_loop().time()
    return grid_floor(now, period) + period - now


def grid_floor(t: float, period: float) -> float:
    """The last instant ``GRID_PHASE_S + k * period`` at or before ``t`` (an instant a hair
    before ``t`` by rounding counts as ``t``'s own)."""
    return math.floor((t - GRID_PHASE_S) / period + 1e-9) * period + GRID_PHASE_S
