"""The one ``HOST:PORT`` parser, and the one check of an agent API's base URL.

Every place that reads a ``HOST:PORT`` (flags, config, announcements, peer addresses,
service addresses, HAProxy binds) splits it here and adds its own checks and wording.
"""

from __future__ import annotations

import ipaddress


def split_host_port(text: str, *, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``; an IPv6 host in brackets: ``[fd00::1]:7400``.

    Splits on the last ``:``; brackets around the host are removed. HOST must be non-empty;
    PORT is 1..65535 in ASCII digits. Raises ``ValueError`` saying what is wrong.
    Checks on the host itself (names, addresses) are the caller's.
    """
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a HOST:PORT string, not {type(text).__name__}")
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host:
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"{what} port must be an integer in {text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} port must be in 1..65535 in {text!r}")
    return host, port


def api_base_url(value: str) -> str:
    """An agent API's base URL as given on a flag, in ``$HAFLEET_API_URL`` or in a URL file:
    ``http://HOST[:PORT]`` or ``https://HOST[:PORT]``, an IPv6 host in brackets, with at most
    trailing slashes after it (dropped). ValueError saying what is wrong otherwise: the
    client appends ``/v1/...`` to it, so a path (``/v1``), a query, a fragment or a user
    name in it would name another route, silently."""
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"the URL {value!r} holds a space or a control character")
    rule = "give only scheme://HOST[:PORT], such as http://10.0.0.5:7480"
    authority, _, path = value.split("://", 1)[1].partition("/")
    for what, present in (
        ("a query", "?" in value),
        ("a fragment", "#" in value),
        ("a user name or password", "@" in authority),
        (f"a path (/{path})", path.strip("/") != ""),
    ):
        if present:
            raise ValueError(f"the URL {value!r} has {what}: {rule}")
    why = _authority_error(authority)
    if why is not None:
        raise ValueError(f"the URL {value!r} {why}: {rule}")
    return value.rstrip("/")


def _authority_error(authority: str) -> str | None:
    """Why ``HOST[:PORT]`` of a URL is not one (None when it is): an IPv6 host in brackets
    (a zone as ``%25``), a port of ASCII digits in 1..65535."""
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket:
            return "is malformed (an IPv6 host without its ']')"
        try:
            ipaddress.IPv6Address(host.replace("%25", "%", 1))
        except ValueError:
            return f"is malformed ([{host}] is not an IPv6 address)"
        if rest and not rest.startswith(":"):
            return f"is malformed ({rest!r} after the host)"
        port = rest[1:] if rest else ""
    else:
        host, _, port = authority.partition(":")
        if ":" in port or "[" in authority or "]" in authority:
            return "is malformed (an IPv6 host goes in brackets: http://[fd00::1]:7480)"
    if not host:
        return "has no host"
    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return f"has port {port!r} (a port is 1..65535)"
    return None
