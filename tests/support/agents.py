"""Agent processes for tests: the one place that starts, waits for, stops and reads them.

- :func:`agent_command` and :func:`run_args`: the argv of ``hafleet-agent run`` (its flags are
  the contract of docs/agent.md); :func:`write_secret` for the key and token files.
- :func:`spawn`: a process in its own session, output appended to a log, with
  ``PR_SET_PDEATHSIG`` = SIGKILL when started from the main thread (it dies with the test
  process). :class:`Node` is one agent: its argv, data dir and log, and its starts and exits.
- :func:`wait_for` / :func:`holds_for`: poll with a deadline; a timeout names what it waited
  for and the last thing it saw. Nothing sleeps in place of a condition.
- Stopping is by PID: :func:`signal_and_reap` and :func:`kill_all` for our own children (a
  child's PID is not reused before we reap it); :func:`running` with the start time for the
  processes of pid files, whose PID may be another process's by now (PIDs wrap at 32768 here).
- :func:`tail` and :meth:`Node.log`: what a process wrote, for the report of a failed test.

Users: the loopback cluster harness (harness.py), the chaos lab (tests/chaos/chaoslab.py),
the balancer lab (tests/agent/balancer/balancer_lab.py) and the collection's lab tests
(tests/agent/collection/labtest.py). pytest.ini's ``pythonpath`` makes these modules importable.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hafleet_agent.supervise import start_time

RAFT_PORT = 7400
API_PORT = 7480
EXIT_TIMEOUT = 15.0
POLL_INTERVAL = 0.05

T = TypeVar("T")


def agent_command() -> list[str]:
    """The installed ``hafleet-agent`` console script next to this interpreter."""
    script = Path(sys.executable).with_name("hafleet-agent")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "hafleet_agent"]


def write_secret(path: Path, secret: str | None = None) -> Path:
    """A key or token file: 64 hex characters, mode 0600 from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, ((secret or secrets.token_hex(32)) + "\n").encode())
    finally:
        os.close(fd)
    os.chmod(path, 0o600)
    return path


def write_config(path: Path, settings: Mapping[str, Any]) -> Path:
    """A ``--config`` TOML file of top-level scalars and lists (JSON spells them alike)."""
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in sorted(settings.items())))
    return path


def run_args(
    node_id: str,
    *,
    cluster: str,
    host: str,
    data_dir: Path,
    key_file: Path,
    token_file: Path,
    heartbeat_ms: int,
    election_timeout_ms: int,
    bootstrap_expect: int | None = None,
    join: Iterable[str] = (),
    mdns: bool = False,
    config_file: Path | None = None,
) -> list[str]:
    """``run`` and its flags for one agent on ``host`` with the default ports. ``mdns``
    announces and browses on ``host`` only."""
    args = [
        "run",
        "--node-id",
        node_id,
        "--cluster",
        cluster,
        "--bind",
        host,
        "--raft-port",
        str(RAFT_PORT),
        "--api-port",
        str(API_PORT),
        "--data-dir",
        str(data_dir),
        "--key-file",
        str(key_file),
        "--token-file",
        str(token_file),
        "--heartbeat-ms",
        str(heartbeat_ms),
        "--election-timeout-ms",
        str(election_timeout_ms),
    ]
    if bootstrap_expect is not None:
        args += ["--bootstrap-expect", str(bootstrap_expect)]
    join = list(join)
    if join:
        args += ["--join", ",".join(join)]
    args += ["--mdns", "--mdns-interface", host] if mdns else ["--no-mdns"]
    if config_file is not None:
        args += ["--config", str(config_file)]
    return args


# --- waiting --------------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
    check: Callable[[], None] | None = None,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy, which is returned. Connection
    errors count as "not yet". ``check`` runs before each poll and may raise to fail early;
    ``describe`` says what was seen last when the time is up."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        if check is not None:
            check()
        try:
            result = predicate()
        except (OSError, http.client.HTTPException) as exc:
            result, last = None, exc
        else:
            last = result
        if result:
            return result
        if time.monotonic() >= deadline:
            seen = describe() if describe is not None else repr(last)
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {seen}")
        time.sleep(interval)


async def wait_until(predicate: Callable[[], Any], what: str, timeout: float) -> None:
    """:func:`wait_for` for a test on the event loop: poll ``predicate`` without blocking
    the loop (the code under test runs on it), every 2 ms, until it is truthy; TimeoutError
    after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)
    assert predicate(), what


def holds_for(
    predicate: Callable[[], bool], seconds: float, what: str, interval: float = 0.1
) -> None:
    """Assert that ``predicate`` stays true for ``seconds`` (a bounded negative check)."""
    deadline = time.monotonic() + seconds
    while True:
        assert predicate(), f"{what} stopped holding"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


# --- starting and stopping ------------------------------------------------------------------


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """PR_SET_PDEATHSIG: the child gets SIGKILL when the thread that started it ends, so
    :func:`spawn` uses it only from the main thread (whose end is the test process's)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    header: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, stdin from /dev/null, stdout and stderr appended to
    ``log_path`` (after a ``header`` line, if given), Python output unbuffered."""
    main_thread = threading.current_thread() is threading.main_thread()
    with log_path.open("ab") as log:
        if header is not None:
            log.write(f"{header}\n".encode())
            log.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if main_thread else None,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )


def signal_and_reap(
    proc: subprocess.Popen | None, sig: int = signal.SIGKILL, timeout: float = EXIT_TIMEOUT
) -> None:
    """Signal one child by its PID and reap it (bounded); nothing if it has ended."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def kill_all(procs: Iterable[subprocess.Popen | None], timeout: float = EXIT_TIMEOUT) -> list[str]:
    """SIGCONT (a paused one too) and SIGKILL every child still running, by its PID, then reap
    them all; returns what did not die in ``timeout``."""
    procs = [p for p in procs if p is not None]
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGKILL)
    errors = []
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            errors.append(f"pid {proc.pid} did not die")
    return errors


def running(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` is a process that has not exited: a zombie (state Z) has exited. With
    ``started`` (its start time, :func:`start_time`), only if it is still that process: PIDs
    wrap at 32768 here and a make test run starts processes by the ten thousand.

    HAProxy runs with ``-D``: its parent exits, so it becomes a child of PID 1. On this machine
    kind PID 1 (not an init system) reaps orphans lazily, about 1.5-2 s after they exit (more
    under load), and until then ``/proc/PID`` stays, holding no memory, socket or file. A test
    that took ``/proc/PID`` for "alive" failed after a clean stop (docs/development.md).
    """
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log ("" when there is none yet)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


# --- one agent ------------------------------------------------------------------------------


@dataclass
class Node:
    id: str
    index: int
    host: str
    data_dir: Path
    log_path: Path
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    #: False once the test killed or stopped it, or expects it to stop by itself.
    expect_running: bool = False
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    #: Started with the --tls-* flags: its API speaks HTTPS.
    tls: bool = False

    @property
    def raft_addr(self) -> str:
        return f"{self.host}:{RAFT_PORT}"

    @property
    def api_addr(self) -> str:
        return f"{self.host}:{API_PORT}"

    @property
    def api_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.api_addr}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Node:
        """Start the agent with its argv (again, after a stop: same flags and data dir)."""
        assert not self.running(), f"{self.id} is already running"
        header = f"===== harness: start #{self.starts + 1} of {self.id} ====="
        self.proc = spawn(self.argv, self.log_path, header=header)
        self.starts += 1
        self.expect_running = True
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def report(self, lines: int = 40) -> str:
        """A heading (id, host, pid, running or the exit code) and the last lines of the log."""
        state = "running" if self.running() else f"exited {self.proc and self.proc.poll()}"
        heading = f"--- {self.id} ({self.host}, pid {self.pid}, {state}) last lines:"
        return "\n".join([heading, *self.log().splitlines()[-lines:]])
