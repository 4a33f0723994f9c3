"""sd_notify(3) in the standard library: tell systemd, when it runs the agent as a
``Type=notify`` service, that the agent is ready (``READY=1``), what it is doing
(``STATUS=...``) and that it stops (``STOPPING=1``).

systemd passes the address of its notification socket in ``$NOTIFY_SOCKET``: a file system
path (``/run/systemd/notify``) or, with a leading ``@``, a name in the abstract namespace.
A notification is one datagram of ``KEY=VALUE`` lines. Outside systemd (the variable unset:
a shell, the lab's supervisor, the tests) every call does nothing. A notification that cannot
be sent is logged and otherwise ignored: the agent keeps serving (systemd then gives up on it
after ``TimeoutStartSec`` and says why in its journal)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("hafleet.sdnotify")

#: The variable systemd sets for a service with Type=notify (or NotifyAccess=).
ENV = "NOTIFY_SOCKET"
#: systemd truncates a STATUS= text it shows; longer ones are cut here, whole characters.
MAX_STATUS = 200


def socket_address(value: str) -> str | bytes:
    """The ``connect`` address of a ``$NOTIFY_SOCKET`` value: an absolute path as it is, an
    abstract name (``@name``) as bytes with a leading NUL. ValueError for anything else
    (systemd also knows ``vsock:`` addresses, which a Linux service host does not use)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    raise ValueError(f"{ENV} is neither an absolute path nor an abstract name (@...): {value!r}")


def status_field(text: str) -> str:
    """A ``STATUS=`` line for ``text``: one line (newlines become spaces), at most
    :data:`MAX_STATUS` characters."""
    return "STATUS=" + " ".join(text.split())[:MAX_STATUS]


class Notifier:
    """Notifications to the service manager at ``address`` (``None``: none is listening, and
    every call returns False). :meth:`from_env` reads ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        value = (os.environ if environ is None else environ).get(ENV, "")
        if not value:
            return cls(None)
        try:
            return cls(socket_address(value))
        except ValueError as exc:
            log.warning("not notifying the service manager: %s", exc)
            return cls(None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=VALUE`` each) as one datagram; True when it was sent."""
        if self.address is None:
            return False
        if not fields or any("\n" in f or "=" not in f for f in fields):
            raise ValueError(f"notification fields must be KEY=VALUE lines: {fields!r}")
        payload = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(payload)
        except OSError as exc:
            log.warning("could not notify the service manager (%s): %s", fields[0], exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """``READY=1``: the service is up (systemd's start job ends here)."""
        return self.notify("READY=1", status_field(status))

    def status(self, status: str) -> bool:
        return self.notify(status_field(status))

    def stopping(self, status: str) -> bool:
        """``STOPPING=1``: the service is stopping of its own accord or on request."""
        return self.notify("STOPPING=1", status_field(status))
