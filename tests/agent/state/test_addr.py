"""hafleet_agent.addr.split_host_port: the one HOST:PORT parser."""

from __future__ import annotations

import pytest

from hafleet_agent.addr import api_base_url, split_host_port


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


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:7480", "http://127.0.0.1:7480"),
        ("https://a.example:7480/", "https://a.example:7480"),
        ("http://h:1//", "http://h:1"),
        ("http://X/", "http://X"),  # only slashes go
    ],
)
def test_an_api_base_url_loses_its_trailing_slashes(value: str, expected: str) -> None:
    assert api_base_url(value) == expected


@pytest.mark.parametrize("value", ["127.0.0.1:7480", "ftp://h:1", "HTTP://h:1", "", " http://h:1"])
def test_an_api_base_url_needs_an_http_scheme(value: str) -> None:
    with pytest.raises(ValueError, match="expected an http:// or https:// URL, got ") as info:
        api_base_url(value)
    assert repr(value) in str(info.value)
