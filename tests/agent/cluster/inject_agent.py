"""``hafleet-agent run`` that, once it leads, puts entries the state machine cannot apply into
the group's log (what an older agent, or a bug, could have committed), then records their
results under the KV key ``inject/done``. For test_bad_input.py only.

Usage: ``python inject_agent.py run --node-id ... (the flags of hafleet-agent run)``. The
entries go through the agent's own proposal path (``Driver.propose``), so they are
replicated, committed and applied by every member exactly like any other entry.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

from hafleet_agent.cli import main
from hafleet_agent.node.errors import NoLeader
from hafleet_agent.node.node import Node
from hafleet_agent.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from hafleet_agent.state import encode_command, member_context

log = logging.getLogger("hafleet.test.inject")

DEEP = b"[" * 5000 + b"]" * 5000
CTX = member_context("127.0.0.1:9", "127.0.0.1:10")
#: (name, entry type, data): every one must apply as a no-op with an error.
BAD_ENTRIES: list[tuple[str, EntryType, bytes]] = [
    ("not-utf8", EntryType.NORMAL, b"\xff\xfe not json"),
    ("unhashable-op", EntryType.NORMAL, b'{"op": [], "rid": "x"}'),
    (
        "member-put-web-1",
        EntryType.NORMAL,
        b'{"op": "member_put", "id": "web 1", "raft_addr": "127.0.0.1:9", '
        b'"api_addr": "127.0.0.1:10", "service_addr": null}',
    ),
    ("deep-value", EntryType.NORMAL, b'{"op": "kv_put", "key": "deep", "value": ' + DEEP + b"}"),
    (
        "add-web-1",
        EntryType.CONF_CHANGE,
        ConfChange(ConfChangeType.ADD_LEARNER, "web 1", CTX).encode(),
    ),
    (
        "add-300-bytes",
        EntryType.CONF_CHANGE,
        ConfChange(ConfChangeType.ADD_VOTER, "x" * 300).encode(),
    ),
    (
        "add-newline",
        EntryType.CONF_CHANGE,
        ConfChange(ConfChangeType.ADD_LEARNER, "a\nINFO hafleet.agent: forged line", CTX).encode(),
    ),
    ("cc-undecodable", EntryType.CONF_CHANGE, b"\x07\x00\x01z"),
]


async def inject(agent: Any) -> None:
    deadline = time.monotonic() + 120
    while not agent.is_leader():
        if time.monotonic() > deadline:
            log.error("inject: never became the leader")
            return
        await asyncio.sleep(0.05)
    results: dict[str, Any] = {}
    for name, kind, data in BAD_ENTRIES:
        entry = Entry(0, 0, kind, data)
        for _ in range(100):  # a pending conf change or the term's first entry: retry
            try:
                res = await agent.driver.propose(lambda raw, e=entry: raw._propose(e))
            except NoLeader:
                await asyncio.sleep(0.1)
                continue
            results[name] = [res.index, res.status]
            break
        else:
            results[name] = "not proposed"
    log.info("inject: done %s", results)
    await agent.write(encode_command("kv_put", key="inject/done", value=results))


_original_start = Node.start
_tasks: list[asyncio.Task[None]] = []


async def _start(self: Any, *args: Any, **kwargs: Any) -> None:
    await _original_start(self, *args, **kwargs)
    _tasks.append(asyncio.create_task(inject(self), name="inject"))


Node.start = _start  # type: ignore[method-assign]

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
