"""The log's writer thread (node/walwriter.py): jobs run in order in the thread, each one's
completion (or its error) comes back on the loop, and the thread runs under SCHED_BATCH."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from hafleet_agent.node.walwriter import WalWriter


def test_jobs_run_in_order_and_complete_on_the_loop() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        writer = WalWriter()
        ran: list[int] = []
        done: list[tuple[int, BaseException | None]] = []
        finished = asyncio.Event()

        def job(i: int) -> None:
            if i == 2:
                raise OSError("disk full")
            ran.append(i)

        def completed(i: int, exc: BaseException | None) -> None:
            assert asyncio.get_running_loop() is loop
            done.append((i, exc))
            if len(done) == 4:
                finished.set()

        for i in range(4):
            writer.submit(loop, job, i, lambda exc, i=i: completed(i, exc))
        await asyncio.wait_for(finished.wait(), 10)
        writer.shutdown()
        assert ran == [0, 1, 3]
        assert [i for i, _ in done] == [0, 1, 2, 3]
        assert isinstance(done[2][1], OSError) and done[0][1] is None

    asyncio.run(go())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
def test_the_thread_runs_under_sched_batch() -> None:
    async def go() -> int:
        loop = asyncio.get_running_loop()
        writer = WalWriter()
        policy: list[int] = []
        got = asyncio.Event()
        writer.submit(loop, lambda _: policy.append(os.sched_getscheduler(0)), None,
                      lambda exc: got.set())  # fmt: skip
        await asyncio.wait_for(got.wait(), 10)
        writer.shutdown()
        return policy[0]

    assert asyncio.run(go()) == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's own thread is untouched
