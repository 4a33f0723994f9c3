"""The periodic loops sleep to the next instant of their grid (the process's random phase
plus a multiple of their period of the loop's clock: node/tasks.py on_grid), and the Raft
clock's ticks fall on the same grid: loops of periods that divide each other wake in the
same loop cycle."""

from __future__ import annotations

import asyncio

from hafleet_agent.node.tasks import GRID_PHASE_S, on_grid
from hafleet_agent.node.ticker import Ticker


def test_the_next_instant_of_the_grid() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        for period in (0.05, 0.25, 1.0):
            d = on_grid(period)
            now = loop.time()  # (read a few microseconds after on_grid's own)
            assert 0 < d <= period
            k = (now + d - GRID_PHASE_S) / period
            assert abs(k - round(k)) * period < 1e-3, (period, now, d)

    asyncio.run(go())


def test_loops_of_dividing_periods_wake_together() -> None:
    """Three loops started at different moments (0.05, 0.25 and 0.25 s periods): the 0.25 s
    loops wake at the same instants, which are instants of the 0.05 s loop's (within 5 ms;
    with plain sleeps of their period they stay 13 and 31 ms apart)."""

    async def go() -> dict[str, list[float]]:
        loop = asyncio.get_running_loop()
        seen: dict[str, list[float]] = {"tick": [], "a": [], "b": []}

        async def periodic(name: str, period: float, n: int, start: float) -> None:
            await asyncio.sleep(start)
            for _ in range(n):
                await asyncio.sleep(on_grid(period))
                seen[name].append(loop.time())

        await asyncio.gather(periodic("tick", 0.05, 20, 0.0), periodic("a", 0.25, 3, 0.013),
                             periodic("b", 0.25, 3, 0.031))  # fmt: skip
        return seen

    def near(t: float, times: list[float]) -> bool:
        return min(abs(t - u) for u in times) < 5e-3

    seen = asyncio.run(go())
    a, b = seen["a"], seen["b"]
    # Their first wake may be one grid instant apart (a grid instant can fall between their
    # starts): every wake of one inside the other's span is a wake of the other.
    both = [t for t in a if b[0] - 5e-3 <= t <= b[-1] + 5e-3]
    both += [t for t in b if a[0] - 5e-3 <= t <= a[-1] + 5e-3]
    assert len(both) >= 4
    assert all(near(t, a) and near(t, b) for t in both)
    assert all(near(t, seen["tick"]) for t in a + b)


def test_the_raft_ticks_are_on_the_grid() -> None:
    """The ticker's tick 0 is an instant of the grid (so every tick is)."""

    async def go() -> float:
        stop = asyncio.Event()
        ticker = Ticker(0.05, raw=lambda: None, counting=lambda: True, pump=lambda: None,
                        stopping=stop)  # fmt: skip
        task = asyncio.create_task(ticker.run())
        await asyncio.sleep(0)
        origin = ticker._origin
        stop.set()
        await task
        return origin

    k = (asyncio.run(go()) - GRID_PHASE_S) / 0.05
    assert abs(k - round(k)) < 1e-6
