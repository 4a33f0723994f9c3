"""What the syncer is given (:class:`Options`, from ``hafleet-agent balancer``'s flags),
checked before it starts: the HAProxy admin socket, the file of agent API URLs (read again
whenever it changes), and the error that stops the balancer with an exit code."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..addr import api_base_url

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_INTERVAL = 1.0


class BalancerError(Exception):
    """Stops the balancer with ``exit_code`` and this message."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_socket_path(path: str) -> None:
    """Refuse, with a clear message, a path that cannot be HAProxy's admin socket."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BalancerError(
            f"HAProxy admin socket {path} does not exist: start HAProxy with "
            f"'stats socket {path} level admin' in its global section, or fix --haproxy-socket",
            EXIT_USAGE,
        ) from None
    except OSError as exc:
        raise BalancerError(f"cannot use {path}: {exc.strerror}", EXIT_USAGE) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise BalancerError(f"{path} is not a Unix socket (--haproxy-socket)", EXIT_USAGE)


# --- the agents' URLs from a file ------------------------------------------------------------


def parse_api_urls(text: str) -> list[str]:
    """The agent API URLs of a URL file: separated by newlines, commas or blanks; ``#`` starts
    a comment. Each must be an http:// or https:// URL (ValueError otherwise)."""
    urls: list[str] = []
    for line in text.splitlines():
        for word in line.split("#", 1)[0].replace(",", " ").split():
            url = api_base_url(word)
            if url not in urls:
                urls.append(url)
    return urls


class APIURLFile:
    """A file of agent API URLs that is read again whenever it changes (its inode, size or
    modification time), so that whoever manages the syncer (roles/balancer) can hand it a new
    member list without restarting it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None

    def read(self) -> list[str]:
        """The URLs (at least one); BalancerError when the file cannot be used. A file that
        cannot be used counts as read too: changed() is true again only once it changes."""
        try:
            with open(self.path, encoding="utf-8") as f:
                self._seen = self._stat(os.fstat(f.fileno()))
                text = f.read()
        except OSError as exc:
            self._seen = None
            raise BalancerError(
                f"cannot read --api-file {self.path}: {exc.strerror}", EXIT_USAGE
            ) from None
        except UnicodeDecodeError:
            raise BalancerError(f"--api-file {self.path} is not UTF-8 text", EXIT_USAGE) from None
        try:
            urls = parse_api_urls(text)
        except ValueError as exc:
            raise BalancerError(f"--api-file {self.path}: {exc}", EXIT_USAGE) from None
        if not urls:
            raise BalancerError(f"--api-file {self.path} names no agent API URL", EXIT_USAGE)
        return urls

    def changed(self) -> bool:
        """Whether the file differs from the one read last (or is gone, or back)."""
        try:
            now: tuple[int, int, int] | None = self._stat(os.stat(self.path))
        except OSError:
            now = None
        return now != self._seen

    @staticmethod
    def _stat(st: os.stat_result) -> tuple[int, int, int]:
        return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class Options:
    """The syncer's settings (cli_balancer.py builds them from the flags)."""

    haproxy_socket: str
    backend: str
    api_urls: list[str]
    token: bytes
    strategy: str = "weighted"
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    interval: float = DEFAULT_INTERVAL
    state_file: str | None = None
    # A file of more agent API URLs (after api_urls), re-read whenever it changes.
    api_file: str | None = None
    # The cluster CA (PEM) that https:// agents' certificates must chain to (else the
    # system's CAs).
    ca_file: str | None = None
    # This balancer's name in the KV protocol (balancer/registered/<id>); default: the host's
    # name and a digest of the HAProxy socket's path (default_balancer_id).
    balancer_id: str | None = None
    # The virtual address to look for on this host's interfaces (vip.py): the registration
    # says whether this balancer holds it.
    vip: str | None = None
    # Serve the syncer's own /metrics on this port (metrics.py; None: not at all).
    metrics_port: int | None = None
    metrics_bind: str = "127.0.0.1"
