"""The one ``HOST:PORT`` parser, and the one check of an agent API's base URL.

Every place that reads a ``HOST:PORT`` (flags, config, announcements, peer addresses,
service addresses, HAProxy binds) splits it here and adds its own checks and wording.
"""

from __future__ import annotations


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
    """An agent API's base URL as given on a flag or in a URL file: it must start with
    ``http://`` or ``https://`` (ValueError otherwise); a trailing ``/`` is dropped."""
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")
