"""The writes waiting for the Raft driver to append them, and the wait for their answers.

A command written on the leader (``Driver.propose_cmd``) is not proposed on its own: it is
queued (:meth:`Proposals.add`) and the driver's next pump appends everything queued in one
proposal (:meth:`Proposals.feed`): one append to the log and one broadcast to the followers
for all of a loop cycle's writes, where a proposal each made an append message per follower
per write (merged again later by raft/coalesce.py). A write whose waiter gave up (timed out,
cancelled) before the pump is not proposed. Each proposed write waits in the driver's
``pending`` (by index) until its entry is applied (:func:`wait_answer`).

A write may come with ``on_applied``: called with the apply's result in the same callback as
the apply, right after its waiter got that result (:meth:`Pending.resolve`). The API answers
the client from there (server/http.py's ``answer_now``): the waiter's task would only resume
a loop cycle later, after the rest of the driver's batch, and ~0.1 ms of a write at 1 client
went there (docs/benchmarks.md, "thirteenth session"). It is never called for a write whose
waiter gave up (timed out, cancelled) or that failed: only with the result its waiter gets."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..raft.core import ProposalDropped
from ..telemetry import TELEMETRY
from .errors import NoLeader, Unknown

log = logging.getLogger("hafleet.agent")

OnApplied = Callable[[Any], None]


@dataclass
class Pending:
    term: int
    future: asyncio.Future[Any]
    on_applied: OnApplied | None = None

    def resolve(self, result: Any) -> None:
        """The write was applied: its waiter gets ``result``, then ``on_applied`` runs (a
        failure there is logged; the waiter still answers)."""
        self.future.set_result(result)
        if self.on_applied is not None:
            try:
                self.on_applied(result)
            except Exception:
                log.exception("the answer at the apply failed; the handler answers instead")


class _Proposer(Protocol):
    def propose_many(self, data: Sequence[bytes]) -> tuple[int, int]: ...


class Proposals:
    def __init__(self) -> None:
        self.queued: list[tuple[bytes, asyncio.Future[Any], OnApplied | None]] = []

    def add(self, data: bytes, on_applied: OnApplied | None = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queued.append((data, fut, on_applied))
        return fut

    def feed(self, raw: _Proposer, pending: dict[int, Pending]) -> None:
        """Append the queued writes in one proposal; each waits in ``pending`` by index (or
        fails with NoLeader when the core drops the proposal: no longer the leader...)."""
        queued, self.queued = self.queued, []
        live = [q for q in queued if not q[1].done()]
        if not live:
            return
        try:
            term, last = raw.propose_many([data for data, _, _ in live])
        except ProposalDropped as exc:
            TELEMETRY.proposals_failed += len(live)
            for _, fut, _ in live:
                fut.set_exception(NoLeader(f"not proposed: {exc}"))
            return
        first = last - len(live) + 1
        for i, (_, fut, on_applied) in enumerate(live):
            pending[first + i] = Pending(term, fut, on_applied)

    def fail(self, exc: BaseException) -> None:
        """The node stops: the writes not proposed yet fail with ``exc``."""
        queued, self.queued = self.queued, []
        for _, fut, _ in queued:
            if not fut.done():
                fut.set_exception(exc)

    def withdraw(self, fut: asyncio.Future[Any]) -> bool:
        """Take a write that is still queued out of the queue; whether it was there."""
        for i, (_, f, _) in enumerate(self.queued):
            if f is fut:
                del self.queued[i]
                return True
        return False


class Deadlines:
    """The writes' time limits on one timer. Every write waits as long (the driver's write
    timeout), so their limits come in the order they were set: the timer is set for the
    oldest limit, and a write still waiting at its limit gets TimeoutError. (An
    ``asyncio.timeout`` a write cost a timer of its own, set and cancelled: about 5 us a
    write on this machine.)"""

    def __init__(self) -> None:
        self._limits: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, fut: asyncio.Future[Any], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._limits.append((loop.time() + timeout, fut))
        if self._handle is None:
            self._handle = loop.call_at(self._limits[0][0], self._expire)

    def _expire(self) -> None:
        self._handle = None
        loop = asyncio.get_running_loop()
        now, limits = loop.time(), self._limits
        while limits and (limits[0][0] <= now or limits[0][1].done()):
            _, fut = limits.popleft()
            if not fut.done():
                fut.set_exception(TimeoutError())
        if limits:
            self._handle = loop.call_at(limits[0][0], self._expire)

    def __len__(self) -> int:
        return len(self._limits)


async def wait_answer(
    fut: asyncio.Future[Any],
    pending: dict[int, Pending],
    proposals: Proposals,
    timeout: float,
    deadlines: Deadlines,
) -> Any:
    """The apply result of a write (queued or proposed), or Unknown after ``timeout`` (the
    same for every write of ``deadlines``)."""
    deadlines.add(fut, timeout)
    try:
        return await fut
    except TimeoutError:
        TELEMETRY.proposals_failed += 1
        if proposals.withdraw(fut):
            raise NoLeader(f"the write was not proposed within {timeout:.0f}s") from None
        index = next((i for i, p in pending.items() if p.future is fut), None)
        if index is not None:
            pending.pop(index, None)
        raise Unknown(
            f"the write was proposed at index {index} but not applied within "
            f"{timeout:.0f}s; it may still be"
        ) from None
