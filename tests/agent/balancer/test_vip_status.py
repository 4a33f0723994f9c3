"""``hafleet-agent status``'s BALANCERS section (client.py ``render_balancers``): which
balancer holds the virtual address, when each was last heard of; ``-`` where a syncer was
given no ``--vip`` or is of an older version."""

from __future__ import annotations

import time

from hafleet_agent.client import render_balancers
from hafleet_agent.keys import REGISTERED_PREFIX
from hafleet_agent.registrations import balancers_view


def test_the_balancers_section() -> None:
    now = time.time()
    reg = {"backend": "app", "host": "lb-a", "at": now - 1.0, "ttl_s": 10.0}
    items = {
        f"{REGISTERED_PREFIX}lb1": {**reg, "vip": "10.78.0.250", "vip_held": True},
        f"{REGISTERED_PREFIX}lb2": {**reg, "host": "lb-b", "vip": "10.78.0.250", "vip_held": False},
        f"{REGISTERED_PREFIX}lb3": reg,  # no --vip, or an older syncer
        f"{REGISTERED_PREFIX}lb4": {**reg, "at": now - 60},  # gone without deregistering
        f"{REGISTERED_PREFIX}lb5": "junk",
    }
    view = balancers_view(
        lambda prefix: [k for k in items if k.startswith(prefix)],
        lambda key: {"key": key, "value": items[key], "modify_index": 1},
        now,
    )
    lines = render_balancers(view).splitlines()
    assert [line.split() for line in lines] == [
        ["BALANCER", "HOST", "BACKEND", "LAST-SEEN", "VIP", "VIP-HELD"],
        ["lb1", "lb-a", "app", "1.0s", "ago", "10.78.0.250", "yes"],
        ["lb2", "lb-b", "app", "1.0s", "ago", "10.78.0.250", "no"],
        ["lb3", "lb-a", "app", "1.0s", "ago", "-", "-"],
        ["lb4", "lb-a", "app", "60.0s", "ago", "(stale)", "-", "-"],
        ["lb5", "-", "-", "-", "-", "-"],
    ]
    # the columns line up (every row starts its VIP at the same place)
    assert len({line.index("10.78.0.250") for line in lines[1:3]}) == 1
