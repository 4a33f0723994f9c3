"""Bad input for ``hafleet-agent balancer``: a socket path that does not exist or is no
socket, nothing listening, a backend that does not exist, a backend whose algorithm does not
fit the strategy, a bad or refused token, a member with a bad address, and an HAProxy that
answers commands with errors. Each gives a clear message and a non-zero exit, or a logged
retry that ends converged; never a half-applied state left silently.

The cluster side is a fake agent API here (a fixed ``/v1/watch`` view): these cases are
about the syncer's handling of its inputs, not about the agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from balancer_lab import HAProxy, Syncer, agent_command, kill, wait_for

from hafleet_agent.balancer.inputs import parse_api_urls

TOKEN = "b" * 64
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, TOKEN.encode())
    os.close(fd)
    return path


def run_balancer(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_command() + ["balancer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# --- a fake agent API -------------------------------------------------------------------------


class FakeAgent:
    """``/v1/watch`` answers ``view``, after ``hold`` seconds when nothing is new (or at
    once when the fake stops); KV writes are recorded. ``status`` forces an answer."""

    def __init__(self, view: dict[str, Any], status: int = 200, hold: float = 0.5) -> None:
        self.view = view
        self.status = status
        self.hold = hold
        self.holding = 0  # watches that found nothing new and waited
        self.kv: dict[str, Any] = {}
        self.writes: list[tuple[str, str]] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _main(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/watch", self._watch)
        app.router.add_route("*", "/v1/kv/{key:.+}", self._kv)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def _auth(self, request: web.Request) -> web.Response | None:
        if self.status != 200:
            return web.json_response({"error": "forced"}, status=self.status)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "wrong API token"}, status=401)
        return None

    async def _watch(self, request: web.Request) -> web.Response:
        if (err := self._auth(request)) is not None:
            return err
        if int(request.query.get("index", "0")) >= self.view["index"]:
            self.holding += 1
            assert self._stop is not None
            with contextlib.suppress(TimeoutError):  # nothing new: a long poll
                await asyncio.wait_for(self._stop.wait(), self.hold)
        return web.json_response({**self.view, "changed": True})

    async def _kv(self, request: web.Request) -> web.Response:
        if (err := self._auth(request)) is not None:
            return err
        key = request.match_info["key"]
        self.writes.append((request.method, key))
        if request.method == "PUT":
            self.kv[key] = (await request.json())["value"]
            return web.json_response({"key": key, "value": self.kv[key], "modify_index": 1})
        if request.method == "DELETE":
            self.kv.pop(key, None)
            return web.json_response({"key": key, "value": None, "modify_index": 0})
        if key in self.kv:
            return web.json_response({"key": key, "value": self.kv[key], "modify_index": 1})
        return web.json_response({"error": "no key"}, status=404)

    def __enter__(self) -> FakeAgent:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def view(members: dict[str, str], weights: dict[str, int] | None = None) -> dict[str, Any]:
    return {
        "index": 7,
        "leader_id": next(iter(members)),
        "members": [
            {"id": mid, "service_addr": addr, "api_addr": None, "draining": False}
            for mid, addr in members.items()
        ],
        "weights": {"version": 1, "weights": weights or {}},
    }


# --- a fake Runtime API: a small model of HAProxy's, that refuses what it is told to ----------


class FakeHAProxy:
    HEADER = (
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
        "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
        "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
        "srv_fqdn srv_port\n"
    )

    def __init__(self, path: str, refuse: dict[str, int]) -> None:
        self.path = path
        self.refuse = dict(refuse)  # command prefix -> how many times to refuse it
        self.servers: dict[str, dict[str, Any]] = {}
        self.log: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(self.answer(data.decode().strip()).encode())

    def answer(self, cmd: str) -> str:
        self.log.append(cmd)
        for prefix, n in self.refuse.items():
            if cmd.startswith(prefix) and n > 0:
                self.refuse[prefix] = n - 1
                return "Internal error: simulated refusal.\n"
        w = cmd.split()
        if cmd == "show info":
            return "Name: HAProxy\nVersion: fake\nPid: 4242\n"
        if cmd.startswith("show servers state"):
            if w[3] != "app":
                return "Can't find backend.\n"
            rows = "".join(
                f"3 app {s['id']} {n} {s['addr']} 2 {s['admin']} {s['weight']} {s['weight']} "
                f"0 1 0 0 {s['check']} 0 0 1 - {s['port']}\n"
                for n, s in self.servers.items()
            )
            return self.HEADER + rows + "\n"
        if cmd.startswith("show stat"):
            lines = ["# pxname,svname,qcur,scur,bck,algo,"]
            lines += [f"app,{n},0,0,0,," for n in self.servers]
            lines.append("app,BACKEND,0,0,,roundrobin,")
            return "\n".join(lines) + "\n\n"
        if cmd.startswith("add server "):
            name = w[2].split("/")[1]
            addr, port = w[3].rsplit(":", 1)
            self.servers[name] = dict(
                id=int(w[5]), addr=addr, port=int(port), weight=int(w[7]), admin=1, check=2
            )
            return "New server registered.\n\n"
        name = w[2].split("/")[-1] if len(w) > 2 else ""
        s = self.servers.get(name)
        if s is None:
            return "No such server.\n\n"
        if cmd.startswith("enable health"):
            s["check"] = 6
        elif cmd.startswith("enable server"):
            s["admin"] = 0
        elif cmd.startswith("set server") and w[3] == "state":
            s["admin"] = {"ready": 0, "drain": 8, "maint": 1}[w[4]]
        elif cmd.startswith("set server") and w[3] == "weight":
            s["weight"] = int(w[4])
        elif cmd.startswith("set server") and w[3] == "addr":  # HAProxy 2.6's answer, word by word
            said = [f"IP changed from '{s['addr']}' to '{w[4]}'"] if w[4] != s["addr"] else []
            s["addr"] = w[4]
            said = said or ["no need to change the addr"]
            if len(w) > 6 and w[5] == "port":
                port = int(w[6])
                said.append(
                    f"port changed from '{s['port']}' to '{port}'"
                    if port != s["port"]
                    else "no need to change the port"
                )
                s["port"] = port
            return ", ".join(said) + " by 'stats socket command'\n\n"
        elif cmd.startswith("del server"):
            del self.servers[name]
            return "Server deleted.\n"
        return "\n"

    def __enter__(self) -> FakeHAProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


# --- cases --------------------------------------------------------------------------------------


def test_socket_path_that_does_not_exist(tmp_path: Path, token_file: Path) -> None:
    missing = tmp_path / "nope.sock"
    done = run_balancer(
        "--haproxy-socket", str(missing), "--backend", "app", "--token-file", str(token_file)
    )
    assert done.returncode == 2
    assert f"HAProxy admin socket {missing} does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_path_that_is_not_a_socket(tmp_path: Path, token_file: Path) -> None:
    done = run_balancer(
        "--haproxy-socket", str(token_file), "--backend", "app", "--token-file", str(token_file)
    )
    assert done.returncode == 2
    assert "is not a Unix socket" in done.stderr


def test_socket_nobody_listens_on(tmp_path: Path, token_file: Path) -> None:
    path = Path("/tmp") / f"hfb-stale-{os.getpid()}.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nothing listens: a HAProxy killed with -9
    try:
        done = run_balancer(
            "--haproxy-socket", str(path), "--backend", "app", "--token-file", str(token_file)
        )
    finally:
        path.unlink()
    assert done.returncode == 1
    assert "is HAProxy running?" in done.stderr


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[HAProxy]:
    hp = HAProxy(tmp_path, "127.0.0.1", _free_port(), backend="app", strategy="leastconn")
    try:
        yield hp.start()
    finally:
        hp.close()


def test_backend_that_does_not_exist(haproxy: HAProxy, token_file: Path) -> None:
    done = run_balancer(
        "--haproxy-socket", haproxy.socket, "--backend", "nope", "--token-file", str(token_file)
    )
    assert done.returncode == 2
    assert "HAProxy has no backend 'nope' (it has: app)" in done.stderr


def test_backend_algorithm_that_does_not_fit_the_strategy(
    haproxy: HAProxy, token_file: Path
) -> None:
    done = run_balancer(
        "--haproxy-socket", haproxy.socket, "--backend", "app", "--token-file", str(token_file)
    )  # default strategy: weighted, which needs balance roundrobin
    assert done.returncode == 2
    assert "uses 'balance leastconn', but --strategy weighted needs 'balance roundrobin'" in (
        done.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--api", "127.0.0.1:7480"], "expected an http:// or https:// URL"),
        (["--drain-timeout", "-1"], "must be in (0, 86400]"),
        (["--strategy", "fastest"], "invalid choice"),
    ],
)
def test_bad_flags(haproxy: HAProxy, token_file: Path, args: list[str], message: str) -> None:
    done = run_balancer(
        "--haproxy-socket", haproxy.socket, "--backend", "app", "--token-file", str(token_file),
        *args,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr


def test_token_file_with_loose_mode(haproxy: HAProxy, token_file: Path) -> None:
    token_file.chmod(0o644)
    done = run_balancer(
        "--haproxy-socket", haproxy.socket, "--backend", "app", "--token-file", str(token_file)
    )
    assert done.returncode == 2
    assert "must be 0600" in done.stderr
    assert TOKEN not in done.stderr + done.stdout


def test_token_the_agents_refuse(haproxy: HAProxy, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    fd = os.open(wrong, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"c" * 64)
    os.close(fd)
    with FakeAgent(view({"n1": "127.0.0.1:9"})) as agent:
        done = run_balancer(
            "--haproxy-socket", haproxy.socket, "--backend", "app", "--strategy", "leastconn",
            "--token-file", str(wrong), "--api", agent.url,
        )  # fmt: skip
    assert done.returncode == 2
    assert "refused the API token (401)" in done.stderr
    assert haproxy.servers() == {}  # nothing was touched


def test_member_with_a_bad_address_is_logged_and_the_others_served(
    haproxy: HAProxy, tmp_path: Path, token_file: Path
) -> None:
    members = {"good": "127.0.0.1:9", "bad": "127.0.0.1:99999", "none": ""}
    with FakeAgent(view(members)) as agent:
        syncer = Syncer(
            tmp_path, haproxy, [agent.url], token_file, strategy="leastconn", interval=0.2
        ).start()
        try:
            wait_for(lambda: set(haproxy.servers()) == {"good"}, 20, "the good member added")
            wait_for(lambda: "registered" in syncer.log(), 10, "registration")
            log = syncer.log()
            assert "not balancing to member bad: bad service address '127.0.0.1:99999'" in log
            assert "not balancing to member none: no service address" in log
            assert agent.kv["balancer/registered"]["backend"] == "app"
            syncer.check()
        finally:
            syncer.close()


def test_sigterm_while_a_watch_waits_stops_the_syncer_at_once(
    haproxy: HAProxy, tmp_path: Path, token_file: Path
) -> None:
    """The API client blocks, so the watch's long poll runs in a thread: a stop must not wait
    for that poll to end (15 s here)."""
    with FakeAgent(view({"m1": "127.0.0.1:9001"}), hold=15) as agent:
        syncer = Syncer(
            tmp_path, haproxy, [agent.url], token_file, strategy="leastconn", interval=0.2
        ).start()
        try:
            wait_for(lambda: "m1" in haproxy.servers(), 20, "m1 added")
            wait_for(lambda: agent.holding > 0, 10, "a watch waiting for news")
            assert syncer.proc is not None
            started = time.monotonic()
            syncer.proc.send_signal(signal.SIGTERM)
            code = syncer.proc.wait(timeout=30)
            elapsed = time.monotonic() - started
            assert code == 0, syncer.log()
            assert elapsed < 5, (elapsed, syncer.log())
            assert "stopped (" in syncer.log()
        finally:
            syncer.close()


def test_a_changed_service_address_is_applied_once(
    haproxy: HAProxy, tmp_path: Path, token_file: Path
) -> None:
    """HAProxy 2.6 answers `set server ... addr` with "IP changed from ...": that is success,
    not a refusal to log and retry (the syncer took it for one)."""
    with FakeAgent(view({"m1": "127.0.0.1:9001"})) as agent:
        syncer = Syncer(
            tmp_path, haproxy, [agent.url], token_file, strategy="leastconn", interval=0.2
        ).start()
        try:

            def where() -> tuple[str, int] | None:
                s = haproxy.servers().get("m1")
                return None if s is None else (s.addr, s.port)

            wait_for(lambda: where() == ("127.0.0.1", 9001), 20, "m1 added")
            wait_for(lambda: "registered" in syncer.log(), 10, "registration")
            agent.view = {**view({"m1": "127.0.0.2:9002"}), "index": 8}
            wait_for(lambda: where() == ("127.0.0.2", 9002), 20, "the new address in HAProxy")
            cmd = "set server app/m1 addr 127.0.0.2 port 9002"
            wait_for(lambda: f"applied: {cmd}" in syncer.log(), 10, "the change logged as applied")
            agent.view = {**view({"m1": "127.0.0.3:9002"}), "index": 9}  # the IP alone, then
            wait_for(lambda: where() == ("127.0.0.3", 9002), 20, "the second address in HAProxy")
            wait_for(
                lambda: "applied: set server app/m1 addr 127.0.0.3 port 9002" in syncer.log(),
                10,
                "the second change logged as applied",
            )
            log = syncer.log()
            assert log.count(f"applied: {cmd}") == 1
            assert "failed:" not in log and "retrying" not in log, log
            syncer.check()
        finally:
            syncer.close()


def test_haproxy_that_answers_with_errors_is_retried_and_logged(
    tmp_path: Path, token_file: Path
) -> None:
    """The fake HAProxy refuses n1's `enable server`, then the `state ready` that repairs it,
    and n3's `add server` once each: the log
    says what was applied and what was not, n2 is not held up by n1, and the syncer
    converges once HAProxy takes the commands."""
    path = f"/tmp/hfb-fake-{os.getpid()}.sock"
    members = {"n1": "127.0.0.1:9001", "n2": "127.0.0.1:9002", "n3": "127.0.0.1:9003"}
    refuse = {"enable server app/n1": 1, "set server app/n1 state ready": 1, "add server app/n3": 1}
    log_path = tmp_path / "syncer.log"
    proc = None
    try:
        with FakeAgent(view(members, {"n1": 10, "n2": 20, "n3": 30})) as agent:
            with FakeHAProxy(path, refuse) as hp:
                argv = agent_command() + [
                    "balancer", "--haproxy-socket", path, "--backend", "app",
                    "--token-file", str(token_file), "--api", agent.url, "--interval", "0.2",
                ]  # fmt: skip
                with log_path.open("w") as log:
                    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

                def converged() -> bool:
                    s = hp.servers
                    return (
                        set(s) == set(members)
                        and all(v["admin"] == 0 and v["check"] == 6 for v in s.values())
                        and {n: v["weight"] for n, v in s.items()} == {"n1": 10, "n2": 20, "n3": 30}
                    )

                wait_for(converged, 30, "convergence despite the refusals")
                assert proc.poll() is None
                assert set(hp.refuse.values()) == {0}
    finally:
        kill(proc)
        if os.path.exists(path):
            os.unlink(path)
    text = log_path.read_text()
    # the first round: n1 added but not enabled, n2 fully applied, n3 not added; all said
    assert "failed: enable server app/n1 -> 'Internal error: simulated refusal.'" in text
    assert "failed: set server app/n1 state ready -> 'Internal error: simulated refusal.'" in text
    assert "add server app/n3 127.0.0.1:9003" in text
    first_error = next(ln for ln in text.splitlines() if "failed:" in ln)
    assert "applied 5 of 9 change(s)" in first_error
    assert "not applied: enable health app/n3; enable server app/n3" in first_error
    assert "retrying in" in text
    assert "Traceback" not in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_json_view_helper_is_valid() -> None:
    json.dumps(view({"a": "127.0.0.1:1"}))


# --- the agents' URLs from a file (--api-file) ------------------------------------------------


def test_api_url_file_format() -> None:
    text = "# the pool\nhttp://10.0.0.11:7480/\nhttp://10.0.0.12:7480, https://h3:7480  # tls\n\n"
    assert parse_api_urls(text + "http://10.0.0.11:7480\n") == [
        "http://10.0.0.11:7480",
        "http://10.0.0.12:7480",
        "https://h3:7480",
    ]
    assert parse_api_urls("# nothing yet\n") == []
    with pytest.raises(
        ValueError, match="expected an http:// or https:// URL, got '10.0.0.1:7480'"
    ):
        parse_api_urls("http://10.0.0.11:7480\n10.0.0.1:7480\n")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read --api-file"),
        ("", "names no agent API URL"),
        ("127.0.0.1:7480\n", "expected an http:// or https:// URL"),
    ],
)
def test_bad_api_file(
    haproxy: HAProxy, token_file: Path, tmp_path: Path, content: str | None, message: str
) -> None:
    urls = tmp_path / "api-urls"
    if content is not None:
        urls.write_text(content)
    done = run_balancer(
        "--haproxy-socket", haproxy.socket, "--backend", "app", "--strategy", "leastconn",
        "--token-file", str(token_file), "--api-file", str(urls),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert haproxy.servers() == {}


def test_api_file_is_read_again_when_it_changes(
    haproxy: HAProxy, tmp_path: Path, token_file: Path
) -> None:
    """roles/balancer hands the syncer a new member list through the file: the running syncer
    takes it (no restart), and a file it cannot use keeps the list it has."""
    urls = tmp_path / "api-urls"
    urls.write_text("http://127.0.0.1:9\n")  # nothing answers there
    with FakeAgent(view({"m1": "127.0.0.1:9001"})) as agent:
        syncer = Syncer(
            tmp_path, haproxy, [], token_file, strategy="leastconn", interval=0.2,
            extra=["--api-file", str(urls)],
        ).start()  # fmt: skip
        try:
            wait_for(lambda: "http://127.0.0.1:9" in syncer.log(), 20, "the first list in use")
            assert haproxy.servers() == {}
            assert syncer.proc is not None
            pid = syncer.proc.pid
            urls.write_text(f"# rewritten\n{agent.url}\n")
            wait_for(lambda: "m1" in haproxy.servers(), 20, "m1 added through the new list")
            assert f"agent APIs from {urls}: {agent.url}" in syncer.log()
            urls.write_text("not-a-url\n")
            wait_for(lambda: "not-a-url" in syncer.log(), 20, "the bad list refused")
            assert f"still using {agent.url}" in syncer.log()
            agent.view = {**view({"m1": "127.0.0.1:9001", "m2": "127.0.0.1:9002"}), "index": 8}
            wait_for(lambda: "m2" in haproxy.servers(), 20, "m2 added through the kept list")
            assert syncer.proc.pid == pid
            syncer.check()
        finally:
            syncer.close()
