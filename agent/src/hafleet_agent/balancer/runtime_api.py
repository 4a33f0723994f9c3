"""HAProxy's Runtime API: the admin socket client, its errors, and what an answer means.

:class:`RuntimeAPI` is the asyncio client the syncer uses (one connection per command);
:func:`runtime_command` is the blocking one for scripts and the ``hafleet-haproxy`` helper.
:func:`succeeded` decides from an answer whether HAProxy applied a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import re
import socket

from .haproxy_config import ServerState, StateParseError, parse_servers_state

COMMAND_TIMEOUT = 5.0


class HAProxyUnavailable(Exception):
    """The admin socket cannot be reached (HAProxy stopped, restarting, or never started)."""


class HAProxyRefused(Exception):
    """HAProxy answered a command with an error."""

    def __init__(self, command: str, answer: str) -> None:
        super().__init__(f"{command!r} -> {answer!r}")
        self.command = command
        self.answer = answer


class NoSuchBackend(HAProxyRefused):
    pass


class RuntimeAPI:
    """HAProxy's Runtime API over its admin socket: one connection per command."""

    def __init__(self, path: str, timeout: float = COMMAND_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    async def command(self, cmd: str) -> str:
        if "\n" in cmd or ";" in cmd:
            raise ValueError(f"one command at a time, without ';' or newlines: {cmd!r}")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise HAProxyUnavailable(f"cannot connect to {self.path}: {exc!r}") from None
        try:
            writer.write(cmd.encode() + b"\n")
            await asyncio.wait_for(writer.drain(), self.timeout)
            data = await asyncio.wait_for(reader.read(), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise HAProxyUnavailable(f"{cmd!r} on {self.path}: {exc!r}") from None
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        return data.decode(errors="replace")

    async def execute(self, cmd: str) -> str:
        """A command that changes something; raises HAProxyRefused unless HAProxy says it
        worked: see :func:`succeeded`."""
        answer = await self.command(cmd)
        text = answer.strip()
        if not succeeded(cmd, text):
            raise HAProxyRefused(cmd, text)
        return text

    async def servers_state(self, backend: str) -> list[ServerState]:
        cmd = f"show servers state {backend}"
        text = await self.command(cmd)
        if not text.lstrip().startswith("1"):
            if "find backend" in text:
                raise NoSuchBackend(cmd, text.strip())
            raise HAProxyRefused(cmd, text.strip())
        try:
            return [s for s in parse_servers_state(text) if s.backend == backend]
        except StateParseError as exc:
            raise HAProxyRefused(cmd, str(exc)) from None

    async def stat(self, backend: str) -> dict[str, dict[str, str]]:
        """``show stat`` rows of the backend, by server name (and ``BACKEND``)."""
        cmd = f"show stat {backend} -1 -1"
        text = await self.command(cmd)
        if not text.startswith("# "):
            if "No such proxy" in text:
                raise NoSuchBackend(cmd, text.strip())
            raise HAProxyRefused(cmd, text.strip())
        out = parse_stat(text, backend)
        if "BACKEND" not in out:
            raise NoSuchBackend(cmd, text.strip()[:200] or "no such backend")
        return out

    async def info(self) -> dict[str, str]:
        text = await self.command("show info")
        out = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        if "Pid" not in out:
            raise HAProxyRefused("show info", text.strip()[:200])
        return out

    async def backends(self) -> list[str]:
        text = await self.command("show backend")
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


# What ``set server BK/SRV addr A [port P]`` answers when it worked, in HAProxy 2.x (checked
# against 2.6.12): "IP changed from 'A0' to 'A'" or "no need to change the addr", then, when
# a port was given, ", port changed from 'P0' to 'P'" or ", no need to change the port", and
# " by 'stats socket command'". A refusal is another sentence ("Invalid addr 'x' by ...",
# "No such server.", "Update for the current server address family is only supported
# through configuration file"), so the whole answer must match, not a part of it.
# "nothing changed" is the no-op answer reported for HAProxy 3.x (not checked here).
_QUOTED = r"'[^'\n]*'"
_SET_ADDR_DONE = re.compile(
    rf"(?:IP changed from {_QUOTED} to {_QUOTED}|no need to change the addr)"
    rf"(?:, (?:port changed from {_QUOTED} to {_QUOTED}|no need to change the port))?"
    rf"(?: by {_QUOTED})?"
    rf"|nothing changed(?: by {_QUOTED})?"
)


def succeeded(cmd: str, answer: str) -> bool:
    """Whether HAProxy's (stripped) ``answer`` to ``cmd`` says the command was applied.

    ``add server`` and ``del server`` say so in words, ``set server ... addr`` describes the
    change (or that none was needed), the other commands the syncer sends answer nothing.
    """
    if cmd.startswith("add server "):
        return "New server registered" in answer
    if cmd.startswith("del server "):
        return "Server deleted" in answer
    words = cmd.split()
    if words[:2] == ["set", "server"] and len(words) > 3 and words[3] == "addr":
        return _SET_ADDR_DONE.fullmatch(answer) is not None
    return answer == ""


def parse_stat(text: str, backend: str) -> dict[str, dict[str, str]]:
    """The rows of ``backend`` in a ``show stat`` answer (CSV after ``# ``), by server name
    (and ``BACKEND``); empty when the answer is not a table."""
    if not text.startswith("# "):
        return {}
    rows = list(csv.reader(io.StringIO(text[2:])))
    header = rows[0] if rows else []
    out: dict[str, dict[str, str]] = {}
    for row in rows[1:]:
        if len(row) < 2:
            continue
        rec = dict(zip(header, row, strict=False))
        if rec.get("pxname") == backend:
            out[rec["svname"]] = rec
    return out


def runtime_command(socket_path: str, command: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """One Runtime API command over the admin socket (blocking); returns the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")
