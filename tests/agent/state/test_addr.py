"""hafleet_agent.addr.split_host_port: the one HOST:PORT parser."""

from __future__ import annotations

import pytest

from hafleet_agent.addr import split_host_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7400", ("127.0.0.1", 7400)),
        ("node-1.example:1", ("node-1.example", 1)),
        ("h:65535", ("h", 65535)),
        ("[::1]:7400", ("::1", 7400)),
        ("[fd00::1]:80", ("fd00::1", 80)),
        ("h:007400", ("h", 7400)),
    ],
)
def test_good(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", "must be HOST:PORT"),
        (":7400", "must be HOST:PORT"),
        ("[]:7400", "must be HOST:PORT"),
        ("", "must be HOST:PORT"),
        ("h:", "port must be an integer"),
        ("h:x", "port must be an integer"),
        ("h:-1", "port must be an integer"),
        ("h:+80", "port must be an integer"),
        ("h: 80", "port must be an integer"),
        ("h:\u0663", "port must be an integer"),
        ("h:0", r"port must be in 1\.\.65535"),
        ("h:65536", r"port must be in 1\.\.65535"),
        ("h:99999999999", r"port must be in 1\.\.65535"),
    ],
)
def test_bad(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        split_host_port(text)


def test_what_names_the_value() -> None:
    with pytest.raises(ValueError, match="^raft_addr must be HOST:PORT, got 'x'$"):
        split_host_port("x", what="raft_addr")


def test_not_a_string() -> None:
    with pytest.raises(ValueError, match="must be a HOST:PORT string, not int"):
        split_host_port(7400)  # type: ignore[arg-type]
