"""sdnotify.py: the datagrams systemd's notification socket receives, at a path and at an
abstract name; nothing without $NOTIFY_SOCKET; a socket nobody listens on is logged, not
raised; and ``hafleet-agent run`` says READY=1 only once its API answers, STOPPING=1 on
SIGTERM."""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from agents import agent_command, kill_all, run_args, spawn, tail, write_secret
from harness import lease_subnet

from hafleet_agent.sdnotify import ENV, MAX_STATUS, Notifier, socket_address, status_field


@contextlib.contextmanager
def listener(address: str | bytes) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
        sock.settimeout(5.0)
        yield sock
    finally:
        sock.close()


def test_a_path_is_used_as_it_is_and_an_abstract_name_gets_a_nul() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@hafleet/x") == b"\0hafleet/x"


@pytest.mark.parametrize("value", ["run/notify", "@", "vsock:2:1234", " /run/x"])
def test_other_addresses_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="neither an absolute path nor an abstract name"):
        socket_address(value)


def test_without_the_variable_nothing_is_sent() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready("up") is False
    assert notifier.stopping("down") is False


def test_a_bad_variable_is_logged_and_disables_notifications(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafleet.sdnotify"):
        notifier = Notifier.from_env({ENV: "relative/notify"})
    assert not notifier.enabled
    assert "relative/notify" in caplog.text


def test_ready_status_and_stopping_reach_a_socket_at_a_path(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with listener(path) as sock:
        notifier = Notifier.from_env({ENV: path})
        assert notifier.enabled
        assert notifier.ready("node a: serving") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=node a: serving"
        assert notifier.status("leader\nof 3") is True
        assert sock.recv(4096) == b"STATUS=leader of 3"
        assert notifier.stopping("a signal") is True
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=a signal"


def test_an_abstract_name_is_reached_without_a_file() -> None:
    name = f"hafleet-test-{os.getpid()}-{secrets.token_hex(4)}"
    with listener(b"\0" + name.encode()) as sock:
        assert Notifier.from_env({ENV: "@" + name}).ready("up") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_nobody_listening_is_logged_and_returns_false(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_env({ENV: str(tmp_path / "absent")})
    with caplog.at_level(logging.WARNING, logger="hafleet.sdnotify"):
        assert notifier.ready("up") is False
    assert "could not notify the service manager (READY=1)" in caplog.text


def test_the_status_is_one_line_of_bounded_length() -> None:
    assert status_field("a\n b\tc") == "STATUS=a b c"
    assert len(status_field("x" * (MAX_STATUS + 50))) == len("STATUS=") + MAX_STATUS


@pytest.mark.parametrize("fields", [(), ("READY=1\nX=2",), ("READY",)])
def test_fields_must_be_key_value_lines(tmp_path: Path, fields: tuple[str, ...]) -> None:
    path = str(tmp_path / "notify")
    with listener(path), pytest.raises(ValueError, match="KEY=VALUE"):
        Notifier.from_env({ENV: path}).notify(*fields)


def _api_answers(host: str, port: int) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", "/v1/health")
        return conn.getresponse().status in (200, 503)
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def notified_agent(
    tmp_path: Path, command: list[str]
) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket, str, Path]]:
    """A one-member agent (``command`` + ``run ...``) told to notify a socket of the test's:
    (its process, that socket, its host, its log); killed and its subnet released after."""
    lease = lease_subnet(1)
    host = f"127.0.{lease.x}.1"
    address = f"hafleet-test-{os.getpid()}-{secrets.token_hex(4)}"
    argv = command + run_args(
        "n1",
        cluster="sdnotify",
        host=host,
        data_dir=tmp_path / "data",
        key_file=write_secret(tmp_path / "key"),
        token_file=write_secret(tmp_path / "token"),
        heartbeat_ms=50,
        election_timeout_ms=300,
        bootstrap_expect=1,
    )
    log_path = tmp_path / "agent.log"
    proc = None
    try:
        with listener(b"\0" + address.encode()) as sock:
            sock.settimeout(30.0)
            proc = spawn(argv, log_path, env={ENV: "@" + address})
            yield proc, sock, host, log_path
    finally:
        assert kill_all([proc]) == []
        lease.release()


@pytest.mark.timeout(60)
def test_the_agent_is_ready_once_its_api_answers_and_says_when_it_stops(tmp_path: Path) -> None:
    with notified_agent(tmp_path, agent_command()) as (proc, sock, host, log_path):
        first = sock.recv(4096).decode()
        assert first.startswith("READY=1\n"), first
        assert f"the API serves on {host}:7480" in first
        assert _api_answers(host, 7480), tail(log_path)
        os.kill(proc.pid, signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping: a signal"
        assert proc.wait(timeout=30) == 0, tail(log_path)


# A node that fails while it starts (a storage failure: the peers' appends reach it as soon as
# its transport listens, before its API serves) must never tell systemd it is ready, nor
# announce itself over mDNS: it was "Started" (systemctl start said success), then gone.
_FAIL_WHILE_SERVING = (
    "import sys\n"
    "from hafleet_agent import cli, run\n"
    "serve = run.serve_api\n"
    "def failing(agent):\n"
    "    inner = serve(agent)\n"
    "    async def go():\n"
    "        unserve = await inner()\n"
    "        agent.fail('storage failed, state could not be made durable: injected')\n"
    "        return unserve\n"
    "    return go\n"
    "run.serve_api = failing\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


@pytest.mark.timeout(60)
def test_a_node_that_fails_while_it_starts_is_never_ready(tmp_path: Path) -> None:
    command = [sys.executable, "-c", _FAIL_WHILE_SERVING]
    with notified_agent(tmp_path, command) as (proc, sock, _, log_path):
        first = sock.recv(4096).decode()
        assert first.startswith("STOPPING=1\n"), first  # (it was READY=1)
        assert proc.wait(timeout=30) == 1, tail(log_path)
    assert "injected" in log_path.read_text()
