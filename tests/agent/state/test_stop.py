"""``stop_within``: a stop that does not finish in time is cut off and explained (the agent
then leaves at once; a storage failure must never leave a process behind)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hafleet_agent.agent import stop_within


class FakeAgent:
    def __init__(self, hang: bool) -> None:
        self.hang = hang
        self.handover: bool | None = None
        self.finished = False

    async def stop(self, handover: bool = True) -> None:
        self.handover = handover
        if self.hang:
            await asyncio.Event().wait()  # a stop that waits for something that never comes
        self.finished = True


async def _stuck_helper() -> None:
    await asyncio.Event().wait()


def test_a_stop_that_finishes_is_left_alone() -> None:
    agent = FakeAgent(hang=False)
    assert asyncio.run(stop_within(agent, True, 1.0)) is True  # type: ignore[arg-type]
    assert agent.finished and agent.handover is True


def test_a_stuck_stop_is_cut_off_and_names_what_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = FakeAgent(hang=True)

    async def main() -> tuple[bool, float]:
        helper = asyncio.create_task(_stuck_helper(), name="stuck-helper")
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        began = loop.time()
        ok = await stop_within(agent, False, 0.3)  # type: ignore[arg-type]
        took = loop.time() - began
        helper.cancel()
        return ok, took

    with caplog.at_level(logging.CRITICAL, logger="hafleet.agent"):
        ok, took = asyncio.run(main())
    assert ok is False and not agent.finished and agent.handover is False
    assert 0.3 <= took < 2.0
    text = caplog.text
    assert "stopping took longer than 0.3s; leaving now" in text
    assert "stuck-helper (test_stop.py:" in text and "_stuck_helper" in text
