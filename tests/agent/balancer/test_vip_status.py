"""``hafleet-agent status``'s BALANCERS section (client.py ``render_balancers``): which
balancer holds the virtual address, when each was last heard of; ``-`` where a syncer was
given no ``--vip`` or is of an older version."""

from __future__ import annotations

import subprocess
import time

import pytest
from agents import agent_command

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


def test_the_view_shows_no_control_character_and_only_an_address_as_vip() -> None:
    """A registration is any KV value under ``balancer/registered/`` (the admin token writes
    one, or a broken syncer): what ``/v1/status`` passes on for a terminal (``hafleet-agent
    status``) holds no escape sequence, carriage return or bidi override, and no string longer
    than a host name may be; ``vip`` is an address or null."""
    now = time.time()
    key = f"{REGISTERED_PREFIX}lb\u202eevil"
    value = {
        "host": "lb\x1b[2J\x1b]0;pwned\x07-host",
        "backend": "web\r\nFAKE LINE",
        "strategy": "x" * 10_000,
        "at": now,
        "vip": "10.0.0.1\x1b[31m",
        "vip_held": True,
    }
    (row,) = balancers_view(
        lambda prefix: [key],
        lambda k: {"key": k, "value": value, "modify_index": 1},
        now,
    )
    shown = [row["id"], row["host"], row["backend"], row["strategy"]]
    assert all(ch.isprintable() for text in shown for ch in text), shown
    assert row["id"] == "lb?evil" and row["host"] == "lb?[2J?]0;pwned?-host"
    assert row["backend"] == "web??FAKE LINE" and len(row["strategy"]) == 255
    assert row["vip"] is None and row["vip_held"] is True
    text = render_balancers([row])
    assert "\x1b" not in text and "\r" not in text and len(text.splitlines()) == 2


@pytest.mark.timeout(120)
def test_syncers_with_vip_show_in_status(make_lab) -> None:
    """Two syncers given --vip, one of an address this host holds (127.0.0.1), one of an
    address it does not: /v1/status and `hafleet-agent status` say which holds it."""
    lab = make_lab()
    (node,) = lab.add_agents(1)
    lab.cluster.wait_agreed(timeout=40)
    hp_a = lab.haproxy("weighted", backend="app")
    hp_b = lab.haproxy("weighted", backend="web")
    lab.syncer(hp_a, extra=["--balancer-id", "h1b-lb1", "--vip", "127.0.0.1"])
    lab.syncer(hp_b, extra=["--balancer-id", "h1b-lb2", "--vip", "203.0.113.77/24"])

    def balancers() -> dict[str, dict]:
        st = lab.cluster.ok(node, "GET", "/v1/status")
        return {b["id"]: b for b in st.get("balancers") or []}

    got = lab.wait_for(lambda: len(balancers()) == 2 and balancers(), 20, "both registered")
    assert (got["h1b-lb1"]["vip"], got["h1b-lb1"]["vip_held"]) == ("127.0.0.1", True)
    assert (got["h1b-lb2"]["vip"], got["h1b-lb2"]["vip_held"]) == ("203.0.113.77", False)
    assert got["h1b-lb1"]["fresh"] and got["h1b-lb1"]["backend"] == "app"

    out = subprocess.run(
        [
            *agent_command(),
            "status",
            "--api",
            node.api_url,
            "--token-file",
            str(lab.cluster.token_file),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("BALANCER "))
    rows = {line.split()[0]: line.split() for line in lines[head + 1 : head + 3]}
    assert rows["h1b-lb1"][-2:] == ["127.0.0.1", "yes"], out.stdout
    assert rows["h1b-lb2"][-2:] == ["203.0.113.77", "no"], out.stdout
