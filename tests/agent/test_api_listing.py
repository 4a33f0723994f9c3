"""``GET /v1/kv``'s body is encoded a slice at a time, the event loop let go between slices
(a hostile review: one listing of 100 MB held the loop for 0.5 s, longer than an election
timeout, and the leader lost its leadership to it)."""

from __future__ import annotations

import asyncio
import json

from hafleet_agent.server import api


def _items(n: int, size: int) -> list[dict]:
    return [{"key": f"bulk/{i}", "value": "v" * size, "modify_index": i} for i in range(n)]


def test_the_listing_is_the_json_of_the_whole() -> None:
    for head, items in (
        ({"prefix": ""}, []),
        (
            {"prefix": "a/\u00e9\u202e"},
            [{"key": "k", "value": [1, {"n": None}], "modify_index": 2}],
        ),
        ({"prefix": "bulk/"}, _items(50, 100_000)),
    ):
        body = asyncio.run(api._listing(head, "items", items))
        assert body == json.dumps({**head, "items": items}).encode()
        assert json.loads(body) == {**head, "items": items}


def test_a_large_listing_lets_the_loop_run_between_slices() -> None:
    items = _items(40, 256 * 1024)  # 10 MiB: ten slices
    ticks = 0

    async def other_work() -> None:  # stands for the Raft heartbeats, due meanwhile
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> bytes:
        task = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        started = ticks
        try:
            body = await api._listing({"prefix": "bulk/"}, "items", items)
        finally:
            task.cancel()
        assert ticks - started >= 9, ticks - started  # the loop ran between the slices
        return body

    assert len(asyncio.run(main())) > 10 * 1024 * 1024
