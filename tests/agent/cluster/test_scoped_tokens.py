"""Scoped tokens and the audit log (issue 16): ``run --read-token-file F`` gives a token that
reads and gets 403 on every write; each write is an audit line (scope, source, what, result);
refused tokens are logged at most once per source per interval, with a count of the rest.

A real agent (``hafleet-agent run``, one node) for the routes and its log; the API of
``server/api.py`` in-process over a stub node for the rate limit (its throttle's clock is
the test's, so no test waits for the interval to pass).
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from agents import agent_command, wait_until, write_secret
from harness import Cluster, lease_subnet

from hafleet_agent.server import api as api_mod
from hafleet_agent.server import book_all, build_app, web
from hafleet_agent.server.audit import REFUSED_LOG_INTERVAL_S, value
from hafleet_agent.server.conn import Runner, serve
from hafleet_agent.state import StateMachine

READS = [
    ("GET", "/v1/status"),
    ("GET", "/v1/members"),
    ("GET", "/v1/kv/x"),
    ("GET", "/v1/watch?index=0&wait=1s"),
    ("GET", "/metrics"),
]
WRITES: list[tuple[str, str, Any]] = [
    ("PUT", "/v1/kv/x", {"value": 2}),
    ("POST", "/v1/members", {"id": "n9", "raft_addr": "127.0.0.9:7400", "api_addr": "h:1"}),
    ("DELETE", "/v1/members/x", None),
    ("POST", "/v1/leadership/transfer", {"to": None}),
]


def test_the_read_token_reads_and_every_write_is_403_and_audited(
    make_cluster: Any, tmp_path: Path
) -> None:
    c: Cluster = make_cluster()
    read_file = write_secret(tmp_path / "read-token")
    read = read_file.read_text().strip()
    node = c.add("n1", bootstrap_expect=1, extra_args=["--read-token-file", str(read_file)])
    c.wait_agreed()
    c.ok(node, "PUT", "/v1/kv/x", {"value": 1})  # the admin token writes

    for method, path in READS:
        status, body = c.api(node, method, path, token=read)
        assert status == 200, (method, path, status, body)
    assert c.api(node, "GET", "/v1/kv/x", token=read)[1]["value"] == 1
    for method, path, body in WRITES:
        status, answer = c.api(node, method, path, body, token=read)
        assert status == 403, (method, path, status, answer)
        assert "only read" in answer["error"], answer
    assert c.ok(node, "GET", "/v1/kv/x")["value"] == 1  # nothing was written
    status, answer = c.api(node, "GET", "/v1/status", token="w" * 64)
    assert status == 401 and answer["error"] == "wrong API token", answer
    assert c.api(node, "PUT", "/v1/kv/x", {"value": 3}, token="w" * 64)[0] == 401

    log = node.log()
    audit = [line for line in log.splitlines() if "hafleet.audit" in line]
    writes = [line for line in audit if "hafleet.audit: write " in line]
    assert len(writes) == 1, audit  # the admin's PUT; reads are not audit lines
    assert re.search(
        r"write scope=admin source=127\.0\.\d+\.\d+ method=PUT path=/v1/kv/x key=x status=200",
        writes[0],
    ), writes[0]
    refused = [line for line in audit if "hafleet.audit: refused " in line]
    # Refusals from one source: the first read-token write is logged (403), the rest held.
    assert len(refused) == 1, audit
    assert re.search(
        r"refused scope=read source=127\.0\.\d+\.\d+ method=PUT path=/v1/kv/x key=x "
        r"status=403 reason=",
        refused[0],
    ), refused[0]
    assert read not in log and c.token not in log  # tokens are never logged


def test_a_write_through_a_follower_is_audited_on_both(make_cluster: Any, tmp_path: Path) -> None:
    """The follower logs the client's write (and its answer, relayed from the leader); the
    leader logs the forwarded one with ``forwarded_by``. The read token is refused by the
    follower itself, never forwarded; it reads through a follower too."""
    c: Cluster = make_cluster()
    read_file = write_secret(tmp_path / "read-token")
    read = read_file.read_text().strip()
    c.add_many(3, bootstrap_expect=3, extra_args=["--read-token-file", str(read_file)])
    c.wait_agreed()
    leader = c.leader()
    follower = c.followers()[0]
    c.ok(follower, "PUT", "/v1/kv/via", {"value": "f"})
    assert c.api(follower, "GET", "/v1/kv/via", token=read)[1]["value"] == "f"
    assert c.api(follower, "DELETE", "/v1/kv/via", token=read)[0] == 403

    def audit(node: str) -> list[str]:
        return [ln for ln in c.node(node).log().splitlines() if "hafleet.audit: " in ln]

    def lines(node: str, n: int) -> list[str]:
        # An audit line is written once its answer is sent: wait for it (bounded).
        return c.wait_for(
            lambda: len(got := [ln for ln in audit(node) if "path=/v1/kv/via" in ln]) >= n and got,
            10,
            f"{n} audit line(s) on {node}",
        )

    mine = lines(follower, 2)
    assert len(mine) == 2, mine
    assert "write scope=admin source=127.0." in mine[0] and "status=200" in mine[0], mine
    assert "forwarded_by" not in mine[0]
    assert "refused scope=read" in mine[1] and "status=403" in mine[1], mine
    theirs = lines(leader, 1)
    assert len(theirs) == 1, theirs
    assert re.search(
        rf"write scope=admin source=127\.0\.\d+\.\d+ forwarded_by={follower} method=PUT "
        r"path=/v1/kv/via key=via status=200",
        theirs[0],
    ), theirs


@pytest.mark.parametrize(
    ("mode", "same", "error"),
    [
        (0o644, False, "must be 0600"),
        (0o600, True, "is the admin token"),
    ],
)
def test_a_bad_read_token_file_stops_the_agent_with_exit_code_2(
    tmp_path: Path, mode: int, same: bool, error: str
) -> None:
    token_file = write_secret(tmp_path / "token")
    read_file = write_secret(tmp_path / "read", token_file.read_text().strip() if same else None)
    read_file.chmod(mode)
    lease = lease_subnet(1)
    try:
        argv = agent_command() + [
            "run",
            "--node-id=n1",
            "--cluster=rt",
            f"--bind=127.0.{lease.x}.1",
            f"--data-dir={tmp_path / 'n1'}",
            f"--key-file={write_secret(tmp_path / 'key')}",
            f"--token-file={token_file}",
            f"--read-token-file={read_file}",
            "--no-mdns",
            "--bootstrap-expect=1",
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    finally:
        lease.release()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "read token file" in proc.stderr or "read token in" in proc.stderr, proc.stderr
    assert error in proc.stderr, proc.stderr
    assert "listening on" not in proc.stderr, "refused only after the Raft port listened"


# ---- in-process: the audit lines and the rate limit ----------------------------------------

ADMIN = "a" * 40
READ = "r" * 40


class Stub:
    """What the routes below use of a node: a real StateMachine, no Raft; the leader."""

    def __init__(self, read_token_file: str) -> None:
        self.cfg = SimpleNamespace(max_body_bytes=1 << 20, quota_bytes=0, read_token_file="")
        self.cfg.read_token_file = read_token_file
        self.token = ADMIN.encode()
        self.id = "n1"
        self.state = StateMachine()

    def is_leader(self) -> bool:
        return True

    def write_timeout(self) -> float:
        return 2.0

    async def write(self, data: bytes, on_applied: Any = None) -> dict[str, Any]:
        res = self.state.apply(self.state.index + 1, data)
        assert res.ok, res.error
        if on_applied is not None:  # as the driver does: at the apply, before the return
            on_applied(res)
        return res.result or {}

    async def read_barrier(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"node_id": self.id}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _serving(app: web.Application) -> tuple[Runner, int]:
    runner = await serve(app, "127.0.0.1", 0)
    return runner, runner.port


async def _call(
    port: int, method: str, path: str, token: str | None, source: str, body: Any = None
) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.request(method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status


def test_audit_lines_and_refusals_rate_limited_per_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stub = Stub(str(write_secret(tmp_path / "read", READ)))
    clock = Clock()
    caplog.set_level(logging.INFO, logger="hafleet.audit")

    async def main() -> None:
        app, api = build_app(stub)  # type: ignore[arg-type]
        api.audit.refusals.clock = clock
        runner, port = await _serving(app)
        try:
            assert await _call(port, "PUT", "/v1/kv/a%20b", ADMIN, "127.0.0.1", {"value": 1}) == 200
            assert await _call(port, "PUT", "/v1/kv/c", ADMIN, "127.0.0.1", {}) == 400
            body = {"id": "bad id", "raft_addr": "x:1", "api_addr": "x:2"}
            assert await _call(port, "POST", "/v1/members", ADMIN, "127.0.0.1", body) == 400
            assert await _call(port, "GET", "/v1/status", READ, "127.0.0.1") == 200
            assert await _call(port, "GET", "/v1/kv/a%20b", ADMIN, "127.0.0.1") == 200
            # 30 refusals from 127.0.0.2, 3 from 127.0.0.3 (wrong, none, the read token writing)
            for _ in range(30):
                assert await _call(port, "GET", "/v1/status", "w" * 40, "127.0.0.2") == 401
            assert await _call(port, "GET", "/v1/status", None, "127.0.0.3") == 401
            assert await _call(port, "DELETE", "/v1/kv/c", READ, "127.0.0.3") == 403
            assert await _call(port, "GET", "/v1/status", "w" * 40, "127.0.0.3") == 401
            clock.now += REFUSED_LOG_INTERVAL_S  # the interval passed: the next one is logged
            assert await _call(port, "DELETE", "/v1/kv/c", READ, "127.0.0.2") == 403
            assert api.audit.writes == 3 and api.audit.refused == 34
        finally:
            await runner.cleanup()

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "hafleet.audit"]
    writes = [line for line in lines if line.startswith("write ")]
    assert writes == [
        'write scope=admin source=127.0.0.1 method=PUT path=/v1/kv/a%20b key="a b" status=200',
        "write scope=admin source=127.0.0.1 method=PUT path=/v1/kv/c key=c status=400",
        # an id refused by the grammar is not named (the path does not name one either)
        "write scope=admin source=127.0.0.1 method=POST path=/v1/members status=400",
    ], writes
    refused = [line for line in lines if line.startswith("refused ")]
    assert refused == [
        "refused scope=none source=127.0.0.2 method=GET path=/v1/status status=401 "
        'reason="wrong API token"',
        "refused scope=none source=127.0.0.3 method=GET path=/v1/status status=401 "
        'reason="missing API token (Authorization: Bearer <token>)"',
        "refused scope=read source=127.0.0.2 method=DELETE path=/v1/kv/c key=c status=403 "
        'reason="this token may only read; a write needs the admin token" '
        "(29 more from 127.0.0.2 in the 10s before were not logged)",
    ], refused
    assert not any(ADMIN in line or READ in line for line in lines)
    levels = {r.levelname for r in caplog.records if r.getMessage().startswith("refused ")}
    assert levels == {"WARNING"}


def test_logfmt_values_are_quoted_when_not_plain() -> None:
    assert value("/v1/kv/a%2Fb") == "/v1/kv/a%2Fb"
    assert value('a "b"\nc') == '"a \\"b\\"\\nc"'
    assert value("") == '""'
    assert len(value("x" * 1000)) == 200


# ---- in-process: the write lines' batches (api.py, BOOK_AFTER_S) --------------------------


def _writes_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    audit = [r for r in caplog.records if r.name == "hafleet.audit"]
    return [r for r in audit if r.getMessage().startswith("write")]


def test_write_lines_are_written_in_a_batch_with_the_times_of_their_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_mod, "BOOK_AFTER_S", 0.5)
    stub = Stub("")
    caplog.set_level(logging.INFO, logger="hafleet.audit")
    spans: list[tuple[float, float]] = []

    async def main() -> None:
        app, api = build_app(stub)  # type: ignore[arg-type]
        runner, port = await _serving(app)
        try:
            for k in range(3):
                t0 = time.time()
                body = {"value": k}
                assert await _call(port, "PUT", f"/v1/kv/b{k}", ADMIN, "127.0.0.1", body) == 200
                spans.append((t0, time.time()))
                if k == 0:  # kept, not yet written: one batch BOOK_AFTER_S after the first
                    assert _writes_logged(caplog) == [] and len(api._booked) == 1
            await wait_until(lambda: len(_writes_logged(caplog)) == 3, "3 audit lines", 30)
            assert api._booked == [] and api._book_timer is None
        finally:
            await runner.cleanup()

    asyncio.run(main())
    lines = _writes_logged(caplog)
    assert [f"/v1/kv/b{k} " in r.getMessage() for k, r in enumerate(lines)] == [True] * 3
    for r, (t0, t1) in zip(lines, spans, strict=True):
        # the line's time is its answer's, not the batch's
        assert t0 <= r.created <= t1, (t0, r.created, t1)
        assert r.msecs == int((r.created - int(r.created)) * 1000)


def test_a_refusal_a_full_batch_a_scrape_and_the_stop_write_the_lines_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever writes a batch before its time, the log keeps the answers' order and no line
    is lost: a refusal (its line after the writes before it), BOOK_MAX lines kept, a scrape
    of /metrics (every latency observed so far), the API's cleanup, ``book_all``."""
    monkeypatch.setattr(api_mod, "BOOK_AFTER_S", 3600.0)  # never by the timer here
    monkeypatch.setattr(api_mod, "BOOK_MAX", 4)
    # the stub has no Raft to expose: /metrics answers what the counters say of the writes
    monkeypatch.setattr(api_mod, "exposition", lambda agent, c: web.Response(text="metrics"))
    stub = Stub("")
    caplog.set_level(logging.INFO, logger="hafleet.audit")
    from hafleet_agent.telemetry import TELEMETRY

    def observed() -> int:
        return TELEMETRY.write_seconds.cumulative()[2]

    async def main() -> None:
        app, api = build_app(stub)  # type: ignore[arg-type]
        runner, port = await _serving(app)
        try:
            put = lambda k: _call(port, "PUT", f"/v1/kv/c{k}", ADMIN, "127.0.0.1", {"value": 1})  # noqa: E731
            assert await put(0) == 200 and await put(1) == 200
            assert _writes_logged(caplog) == []
            assert await _call(port, "GET", "/v1/status", "w" * 40, "127.0.0.9") == 401
            msgs = [r.getMessage() for r in caplog.records if r.name == "hafleet.audit"]
            assert [m.split()[0] for m in msgs] == ["write", "write", "refused"], msgs
            for k in range(2, 6):  # the 4th kept line writes the batch at once
                assert await put(k) == 200
            assert len(_writes_logged(caplog)) == 6 and api._booked == []
            before = observed()
            assert await put(6) == 200 and await put(7) == 200
            assert observed() == before  # kept
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}
                ) as resp,
            ):
                assert resp.status == 200
            assert observed() == before + 2 and len(_writes_logged(caplog)) == 8
            assert await put(8) == 200
            other_app, other = build_app(stub)  # type: ignore[arg-type]
            other._book(FakePut("/v1/kv/other"), 200, 0.001, asyncio.get_running_loop())
            book_all()  # the fail-stop's exit (run.py)
            assert len(_writes_logged(caplog)) == 10 and other._booked == []
            assert await put(9) == 200
        finally:
            await runner.cleanup()  # the last line, at the stop
        assert len(_writes_logged(caplog)) == 11

    asyncio.run(main())
    paths = [r.getMessage().split(" path=")[1].split()[0] for r in _writes_logged(caplog)]
    assert paths[:8] == [f"/v1/kv/c{k}" for k in range(8)]  # one API's lines in their order
    assert sorted(paths[8:10]) == ["/v1/kv/c8", "/v1/kv/other"] and paths[10] == "/v1/kv/c9"


class FakePut(dict):  # type: ignore[type-arg]
    """What the audit line reads of a request (another API's, for book_all)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.method, self.raw_path, self.path, self.remote = "PUT", path, path, "127.0.0.1"
        self.headers: dict[str, str] = {}
        self.match_info: dict[str, str] = {}
