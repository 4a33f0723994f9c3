"""The Raft clock of a node: the core's ticks, fed when one of them acts rather than at
every interval.

A fixed ticker woke the event loop every ``tick_ms`` (20 times a second at the default
timing) on every member, although most ticks only count: a follower acts at its election
timeout, a leader at its next heartbeat or quorum check. Here one timer is set for the tick
that acts (``RawNode.ticks_until_due``) on the grid a fixed ticker would follow; the ticks
before it are fed to the core when it fires or just before any other input reaches the core
(``RawNode.clock`` is ``Ticker.due``: the lease check on votes reads the counters), so the
core sees what a node ticked on time sees. After each pump the timer is set again when the
core acts sooner than it was set for (a node that became the leader beats at once); a
timer that fires too early (a follower heard its leader meanwhile) only feeds the ticks
and is set again. A loop held up well past the timer (a paused process, a stalled loop)
does not replay the ticks it missed, as the fixed ticker did not: the heartbeats that came
meanwhile are not read yet; its next tick is one interval later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..raft.rawnode import RawNode
from .tasks import grid_floor

FROZEN_TICKS = 5  # the timer fired this many ticks late: the loop was held up


class Ticker:
    def __init__(
        self,
        tick_s: float,
        *,
        raw: Callable[[], RawNode | None],
        counting: Callable[[], bool],
        pump: Callable[[], None],
        stopping: asyncio.Event,
    ) -> None:
        """``raw``: the core (None before it exists); ``counting``: whether ticks count yet
        (the cluster id is known); ``pump``: handle the core's ready batches."""
        self.tick_s = tick_s
        self._raw = raw
        self._counting = counting
        self._pump = pump
        self._stop = stopping
        self._loop: asyncio.AbstractEventLoop | None = None
        self._origin = 0.0  # the loop time of tick number 0 of the grid
        self._fed = 0  # the ticks of the grid fed to the core (or passed over)
        self._due_no: int | None = None  # the tick the timer is set for
        self._handle: asyncio.TimerHandle | None = None
        self._failed: asyncio.Future[None] | None = None
        self._clock = self.due  # the one bound method given to the core (compared by `is`)
        self.wakeups = 0  # the timer's callbacks (tests, profiling)

    async def run(self) -> None:
        """Drive the clock until the node stops; an error in the timer's callback ends this
        (supervised) task."""
        loop = asyncio.get_running_loop()
        # Tick 0 on the grid of the periodic loops' timers (tasks.on_grid): they fall due
        # with the ticks, one wake-up for both.
        self._loop, self._fed = loop, 0
        self._origin = grid_floor(loop.time(), self.tick_s)
        self._failed = loop.create_future()
        self.arm()
        stop = loop.create_task(self._stop.wait())
        try:
            await asyncio.wait((stop, self._failed), return_when=asyncio.FIRST_COMPLETED)
            if self._failed.done():
                self._failed.result()
        finally:
            stop.cancel()
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            self._loop = None

    def due(self) -> int:
        """The ticks due since the last call, counted as fed (``RawNode.clock``)."""
        loop = self._loop
        if loop is None:
            return 0
        now = loop.time()
        now_no = int((now - self._origin) / self.tick_s)
        n = now_no - self._fed
        if n <= 0:
            return 0
        if self._due_no is not None and now_no - self._due_no > FROZEN_TICKS:
            # held up: feed the ticks up to the one the timer was set for, not that one;
            # it comes one interval from now
            n = max(0, self._due_no - 1 - self._fed)
            self._fed += n
            self._origin = now - self._fed * self.tick_s
        else:
            self._fed = now_no
        return n if self._counting() else 0

    def arm(self) -> None:
        """Set the timer for the tick that acts, unless it is set for that one or sooner."""
        loop, raw = self._loop, self._raw()
        if loop is None or raw is None or self._stop.is_set():
            return
        if raw.clock is not self._clock:
            raw.clock = self._clock
        due_no = self._fed + raw.ticks_until_due()
        if self._handle is not None:
            if self._due_no is not None and due_no >= self._due_no:
                return
            self._handle.cancel()
        self._due_no = due_no
        self._handle = loop.call_at(self._origin + due_no * self.tick_s, self._on_timer)

    def _on_timer(self) -> None:
        self._handle = None
        self.wakeups += 1
        try:
            raw = self._raw()
            if raw is not None:
                if raw.clock is not self._clock:
                    raw.clock = self._clock
                raw.catch_up()
                self._pump()
            self.arm()
        except Exception as exc:
            if self._failed is not None and not self._failed.done():
                self._failed.set_exception(exc)
