"""The ``hafleet-agent`` command line's shared names and argument types (argparse ``type=``
callables); cli.py and cli_balancer.py build their parsers with them."""

from __future__ import annotations

import argparse

from hafleet_agent.addr import api_base_url, split_host_port
from hafleet_agent.config import DEFAULT_API_PORT

PROG = "hafleet-agent"

DEFAULT_API_URL = f"http://127.0.0.1:{DEFAULT_API_PORT}"


# --- argument types -------------------------------------------------------------------------


def port(value: str) -> int:
    """A TCP port, 1..65535."""
    number = _int(value, "port")
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {value!r}")
    return number


def positive_int(value: str) -> int:
    """An integer >= 1."""
    number = _int(value, "number")
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """An integer >= 0."""
    number = _int(value, "number")
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value!r}")
    return number


def host_port_list(value: str) -> list[tuple[str, int]]:
    """``HOST:PORT[,HOST:PORT...]``; an IPv6 host is written in brackets: ``[fd00::1]:7400``."""
    result = []
    for item in value.split(","):
        item = item.strip()
        try:
            host, number = split_host_port(item)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {item!r} ({e})") from None
        if "[" in host or "]" in host:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {item!r}")
        result.append((host, number))
    return result


def api_url(value: str) -> str:
    """The base URL of an agent's HTTP API (:func:`.addr.api_base_url`), for argparse."""
    try:
        return api_base_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def kv_key(value: str) -> str:
    """The KEY of ``kv get``, ``put`` and ``del``: not empty (the agent has no route for it:
    a put was a 404 "Not Found", a get "no key"). The other rules of a key are the agent's,
    which says them (a key of an older version may break them and still be read)."""
    if not value:
        # The agent's own words for a key it refuses (imported only here: the server's
        # modules are no part of the client's start).
        from hafleet_agent.server.api import KEY_RULE

        raise argparse.ArgumentTypeError(f"key '' is empty: {KEY_RULE}")
    return value


def _int(value: str, what: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be an integer, got {value!r}") from None
