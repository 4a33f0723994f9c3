"""Log lines (issue 20; logfmt.py, server/audit.py, throttle.py): ISO 8601 UTC times to the
millisecond in both formats, structured fields in JSON, and a refused token logged once per
source and rate-limited, with what was held back counted."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from harness import Cluster

from hafleet_agent.logfmt import TEXT_FORMAT, IsoFormatter, JsonFormatter, iso_utc, one_write
from hafleet_agent.server.audit import REFUSED_LOG_INTERVAL_S, Audit

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def record(msg: str = "hello %s", *args: Any, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("hafleet.test", logging.WARNING, __file__, 1, msg, args or ("x",), None)
    rec.created = 1796449408.1239  # 2026-12-05T05:43:28.123Z
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_times_are_iso_8601_utc_milliseconds() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1796449408.1239) == "2026-12-05T05:43:28.123Z"
    line = IsoFormatter(TEXT_FORMAT).format(record())
    assert line == "2026-12-05T05:43:28.123Z WARNING hafleet.test: hello x"


def test_json_lines_carry_the_fields_and_never_lose_the_four() -> None:
    fields = {"source": "10.0.0.5", "status": "401", "msg": "forged", "level": "debug"}
    obj = json.loads(JsonFormatter().format(record(fields=fields)))
    assert obj == {
        "ts": "2026-12-05T05:43:28.123Z",
        "level": "warning",
        "logger": "hafleet.test",
        "msg": "hello x",
        "source": "10.0.0.5",
        "status": "401",
    }
    assert set(json.loads(JsonFormatter().format(record()))) == {"ts", "level", "logger", "msg"}


class FakeRequest(dict):
    """What audit.py reads of a request."""

    def __init__(self, remote: str, method: str = "GET", path: str = "/v1/status") -> None:
        super().__init__()
        self.remote = remote
        self.method = method
        self.raw_path = path
        self.headers: dict[str, str] = {}
        self.match_info: dict[str, str] = {}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []
        self.setFormatter(JsonFormatter())

    def emit(self, rec: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(rec)))


class CountingStream:
    """A stream that keeps each write apart (and can be made to fail)."""

    def __init__(self, fail: bool = False) -> None:
        self.writes: list[str] = []
        self.flushes = 0
        self.fail = fail

    def write(self, text: str) -> int:
        if self.fail:
            raise OSError("the log's pipe is gone")
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        self.flushes += 1


@pytest.fixture
def root_handlers() -> Any:
    """The root logger's handlers and level, put back after the test."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = saved
    root.setLevel(level)


def test_one_write_takes_a_batch_of_lines_to_the_stream_at_once(root_handlers: Any) -> None:
    stream, other = CountingStream(), CountingStream()
    plain = logging.StreamHandler(stream)
    plain.setFormatter(IsoFormatter(TEXT_FORMAT))

    class Capture(logging.StreamHandler):  # another kind (a test's capture): left alone
        pass

    capture = Capture(other)
    root_handlers.handlers[:] = [plain, capture]
    root_handlers.setLevel(logging.INFO)
    log = logging.getLogger("hafleet.audit")
    log.info("before")
    assert len(stream.writes) == 1 and stream.writes[0].endswith(": before\n")
    with one_write():
        for i in range(5):
            log.info("write %d", i)
        log.debug("not at this level")
        assert len(stream.writes) == 1  # held
        assert len(other.writes) == 6  # the other kind writes as it goes
    assert len(stream.writes) == 2 and plain.stream is stream
    lines = stream.writes[1].splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [f"write {i}" for i in range(5)]
    assert all(ISO.match(line.split(" ")[0]) for line in lines)
    log.info("after")
    assert len(stream.writes) == 3 and stream.writes[2].endswith(": after\n")


def test_one_write_gives_the_stream_back_when_the_batch_fails(root_handlers: Any) -> None:
    stream = CountingStream()
    handler = logging.StreamHandler(stream)
    root_handlers.handlers[:] = [handler]
    root_handlers.setLevel(logging.INFO)
    with pytest.raises(RuntimeError), one_write():
        logging.getLogger("hafleet.audit").info("kept")
        raise RuntimeError("the batch broke")
    assert handler.stream is stream and stream.writes == ["kept\n"]
    # A stream that cannot be written: the held lines are dropped, nothing is raised.
    broken = CountingStream(fail=True)
    handler.setStream(broken)
    with one_write():
        logging.getLogger("hafleet.audit").info("lost")
    assert handler.stream is broken and broken.writes == []


def test_a_refused_token_is_logged_once_per_source_and_interval() -> None:
    logger = logging.getLogger("hafleet.test.audit")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = Lines()
    logger.addHandler(handler)
    try:
        audit = Audit(logger)
        now = [1000.0]
        audit.refusals.clock = lambda: now[0]
        for _ in range(5):
            audit.answered(FakeRequest("10.0.0.5"), 401, "wrong API token")
        audit.answered(FakeRequest("10.0.0.6"), 401, "missing API token")
        assert [(x["source"], x["held"]) for x in handler.lines] == [
            ("10.0.0.5", 0),
            ("10.0.0.6", 0),
        ]
        first = handler.lines[0]
        assert first["event"] == "refused" and first["status"] == "401"
        assert first["reason"] == "wrong API token" and first["path"] == "/v1/status"
        assert first["msg"].startswith("refused scope=none source=10.0.0.5 method=GET")
        now[0] += REFUSED_LOG_INTERVAL_S
        audit.answered(FakeRequest("10.0.0.5"), 401, "wrong API token")
        assert handler.lines[-1]["held"] == 4
        assert "(4 more from 10.0.0.5" in handler.lines[-1]["msg"]
        assert audit.refused == 7
        # a write is one line each, with its fields
        audit.answered(FakeRequest("10.0.0.7", "PUT", "/v1/kv/a"), 200)
        assert handler.lines[-1]["event"] == "write" and handler.lines[-1]["method"] == "PUT"
    finally:
        logger.removeHandler(handler)


def test_a_real_agent_logs_json_with_iso_times_and_the_refusal(tmp_path: Any) -> None:
    cluster = Cluster(tmp_path)
    try:
        node = cluster.add(bootstrap_expect=1, extra_args=["--log-format", "json"])
        cluster.wait_agreed()
        for _ in range(3):
            assert cluster.api(node, "GET", "/v1/status", token="x" * 40)[0] == 401

        def refusals() -> list[dict[str, Any]]:
            lines = [json.loads(ln) for ln in node.log().splitlines() if ln.startswith("{")]
            return [x for x in lines if x.get("event") == "refused"]

        found = cluster.wait_for(refusals, 10, "the refusal in the agent's log")
        lines = [json.loads(ln) for ln in node.log().splitlines() if ln.startswith("{")]
        assert lines and all(ISO.match(x["ts"]) for x in lines)
        assert any(x.get("event") == "leader" and x["leader"] == "n1" for x in lines)
        members = [x for x in lines if x.get("event") == "membership"]
        assert members and members[0]["member"] == "n1", members
        assert len(found) == 1, found  # three refusals, one line
        assert found[0]["source"].startswith("127.") and found[0]["reason"] == "wrong API token"
    finally:
        cluster.close()
