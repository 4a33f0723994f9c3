"""The node's background tasks on their own (node/tasks.py): a supervised loop is started
again after a failure, with a back-off, and counted; a critical task's failure and a
StorageError anywhere stop the node (fail-stop); cancel_all ends every task."""

from __future__ import annotations

import asyncio

import pytest

import hafleet_agent.node.tasks as tasks_mod
from hafleet_agent.node.tasks import Tasks
from hafleet_agent.wal import StorageError


@pytest.fixture(autouse=True)
def short_back_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks_mod, "RESTART_MIN_S", 0.01)
    monkeypatch.setattr(tasks_mod, "RESTART_MAX_S", 0.04)


def _tasks() -> tuple[Tasks, asyncio.Event, list[str]]:
    stop, failed = asyncio.Event(), []

    def fail(reason: str) -> None:
        failed.append(reason)
        stop.set()

    return Tasks(stop, fail), stop, failed


async def _settle(tasks: Tasks) -> None:
    for _ in range(200):
        if not tasks.running:
            return
        await asyncio.sleep(0.01)


def test_a_supervised_loop_is_restarted_until_it_returns() -> None:
    async def main() -> tuple[list[float], dict[str, int], list[str]]:
        tasks, _, failed = _tasks()
        loop = asyncio.get_running_loop()
        runs: list[float] = []

        async def flaky() -> None:
            runs.append(loop.time())
            if len(runs) < 4:
                raise OSError("EMFILE (test)")

        tasks.supervise(flaky, "flaky")
        await _settle(tasks)
        return runs, tasks.failures, failed

    runs, failures, failed = asyncio.run(main())
    assert len(runs) == 4 and failures == {"flaky": 3} and failed == []
    gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
    assert gaps[0] >= 0.01 and gaps[1] >= 0.02 and gaps[2] >= 0.04  # doubles, then capped


@pytest.mark.parametrize(
    ("critical", "exc", "stops"),
    [
        (True, ValueError("bug (test)"), True),
        (False, StorageError("EIO (test)"), True),
        (False, ValueError("bug (test)"), False),
    ],
)
def test_which_failures_stop_the_node(critical: bool, exc: Exception, stops: bool) -> None:
    async def main() -> tuple[list[str], bool]:
        tasks, stop, failed = _tasks()

        async def boom() -> None:
            raise exc

        tasks.spawn(boom(), "boom", critical=critical)
        await _settle(tasks)
        return failed, stop.is_set()

    failed, stopped = asyncio.run(main())
    assert stopped is stops
    assert failed == ([f"internal error in hafleet-boom: {exc}"] if stops else [])


def test_a_storage_error_in_a_supervised_loop_is_not_retried() -> None:
    async def main() -> tuple[list[str], dict[str, int], int]:
        tasks, _, failed = _tasks()
        runs = 0

        async def disk_gone() -> None:
            nonlocal runs
            runs += 1
            raise StorageError("the data dir is gone (test)")

        tasks.supervise(disk_gone, "sampler")
        await _settle(tasks)
        return failed, tasks.failures, runs

    failed, failures, runs = asyncio.run(main())
    assert runs == 1 and failures == {} and len(failed) == 1 and "sampler" in failed[0]


def test_cancel_all_ends_every_task() -> None:
    async def main() -> tuple[int, int]:
        tasks, _, _ = _tasks()
        for name in ("a", "b", "c"):
            tasks.spawn(asyncio.sleep(60), name)
        before = len(tasks.running)
        await tasks.cancel_all()
        await asyncio.sleep(0)
        return before, len(tasks.running)

    assert asyncio.run(main()) == (3, 0)
