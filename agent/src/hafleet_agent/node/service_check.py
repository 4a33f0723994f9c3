"""The check of this node's own service (``service_check``: ``tcp`` or ``http:/PATH``).

Every ``service_check_interval_ms`` the agent connects to its service address (``tcp``) or
sends ``GET PATH`` and wants a 2xx or 3xx status (``http``), each within
``service_check_timeout_ms``. ``fall`` failures in a row make the service *failing*, ``rise``
passes in a row make it *ok* again (it starts *ok*: a service that never answers fails after
``fall`` checks). Each result goes to the leader (``Checker.on_result``), which keeps the
replicated KV key ``health/service/<id>`` in step (node/chores.py); the syncers drain a
failing member at once and the weight planner gives it 0 (docs/balancer.md).

:class:`Thresholds` is the pure part (unit-tested); :func:`check_once` does one check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..addr import split_host_port

log = logging.getLogger("hafleet.agent")

MAX_DETAIL = 200


@dataclass
class Thresholds:
    """Rise/fall hysteresis: ``update(passed)`` returns whether the service counts as ok."""

    rise: int
    fall: int
    ok: bool = True
    streak: int = 0  # checks in a row that disagree with ``ok``

    def update(self, passed: bool) -> bool:
        if passed == self.ok:
            self.streak = 0
            return self.ok
        self.streak += 1
        if self.streak >= (self.rise if passed else self.fall):
            self.ok = passed
            self.streak = 0
        return self.ok


async def check_once(kind: str, path: str, addr: str, timeout: float) -> tuple[bool, str]:
    """One check of the service at ``addr``: (passed, what was seen)."""
    host, port = split_host_port(addr, what="service address")
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            if kind == "tcp":
                return True, "connected"
            hostname = f"[{host}]" if ":" in host else host
            writer.write(
                f"GET {path} HTTP/1.0\r\nHost: {hostname}:{port}\r\n"
                "User-Agent: hafleet-agent-check\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            line = await reader.readline()
    except TimeoutError:
        return False, f"no answer within {timeout:g}s"
    except OSError as exc:
        return False, (exc.strerror or str(exc))[:MAX_DETAIL]
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 0.5)
    parts = line.decode("latin-1").split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return False, f"not an HTTP answer: {line[:60]!r}"
    status = int(parts[1])
    return 200 <= status < 400, f"HTTP {status}"


class Checker:
    """The loop: checks, thresholds, and every result handed to ``on_result(ok, detail)``."""

    def __init__(
        self,
        kind: str,
        path: str,
        addr: str,
        *,
        interval: float,
        timeout: float,
        rise: int,
        fall: int,
        on_result: Callable[[bool, str], None],
    ) -> None:
        self.kind, self.path, self.addr = kind, path, addr
        self.interval, self.timeout = interval, timeout
        self.thresholds = Thresholds(rise, fall)
        self.on_result = on_result
        self.detail = ""
        self.last_check = 0.0  # time.time() of the last check
        self.checks = 0
        self.failures = 0

    @property
    def ok(self) -> bool:
        return self.thresholds.ok

    def describe(self) -> dict[str, object]:
        """This node's check, for /v1/status."""
        return {
            "check": self.kind if self.kind == "tcp" else f"http:{self.path}",
            "ok": self.ok,
            "detail": self.detail,
            "last_check": self.last_check or None,
            "checks": self.checks,
            "failures": self.failures,
        }

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            passed, detail = await check_once(self.kind, self.path, self.addr, self.timeout)
            self.checks += 1
            self.failures += 0 if passed else 1
            self.last_check = time.time()
            self.detail = detail
            was = self.ok
            ok = self.thresholds.update(passed)
            if ok != was:
                log.warning(
                    "service %s is %s (%s)", self.addr, "ok again" if ok else "failing", detail
                )
            self.on_result(ok, detail)
            delay = self.interval - (loop.time() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.01, delay))
