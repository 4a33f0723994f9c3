"""The client commands given odd input (a hostile review): a token that is not printable
ASCII, an --api URL with a path, empty flags and keys, a VALUE that is not strict JSON, a
stdout closed early (``| head``), text that is not ASCII. Each is a clear line and exit 2 (or
the right request), never a traceback nor a request to the wrong place. No agent runs: a
small HTTP stand-in on 127.0.0.1 records what the CLI sends and answers as an agent would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stub_agent import CLIENT_ENV, Recording, no_local_agent, secret_file, serving

from hafleet_agent.addr import api_base_url
from hafleet_agent.cli import EXIT_BROKEN_PIPE, main
from hafleet_agent.client import json_text, parse_value
from hafleet_agent.client_config import DiscoveryError, discover
from hafleet_agent.server.api import KEY_RULE

TOKEN = "t" * 40


def token_file(path: Path, value: bytes = TOKEN.encode()) -> Path:
    return secret_file(path, value)


@pytest.fixture(autouse=True)
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_local_agent(tmp_path, monkeypatch)


# ---- a stand-in agent ----------------------------------------------------------------------


class _Agent(Recording):
    token = TOKEN
    kv: dict[str, Any] = {}

    def route(self, body: Any) -> tuple[Any, int]:
        key = self.path.split("?")[0].removeprefix("/v1/kv/")
        if self.path == "/v1/status":
            payload, status = (
                {"node_id": "n1", "cluster": "h2r", "cluster_id": None, "term": 1}
                | {"leader_id": None, "commit_index": 0},
                200,
            )
        elif self.path == "/v1/members":
            payload, status = [{"id": "n1", "role": "follower"}], 200
        elif self.command == "PUT":
            self.kv[key] = body["value"]
            payload, status = {"key": key, "value": body["value"], "modify_index": 7}, 200
        elif key in self.kv:
            payload, status = {"key": key, "value": self.kv[key], "modify_index": 7}, 200
        else:
            payload, status = {"error": "Not Found"}, 404
        return payload, status


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[str, list, list[str]]]:
    """``(URL, the calls it got, the client flags for it)``."""
    calls: list[tuple[str, str, Any]] = []
    _Agent.calls, _Agent.kv = calls, {}
    with serving(_Agent) as url:
        yield url, calls, ["--api", url, "--token-file", str(token_file(tmp_path / "token"))]


# ---- 1. the token: printable ASCII, at least 32 characters, wherever it comes from ----------

NOT_ASCII = [
    pytest.param("✓".encode() * 40, id="utf8"),
    pytest.param("é".encode("latin-1") * 40, id="latin1"),
    pytest.param(b"\xc0" * 40, id="binary"),
    pytest.param(b"a" * 20 + b" " + b"a" * 20, id="inner-space"),
]


@pytest.mark.parametrize("secret", NOT_ASCII)
def test_a_token_file_that_is_not_printable_ascii_is_exit_2_naming_it(
    agent: tuple[str, list, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    secret: bytes,
) -> None:
    # (a UnicodeEncodeError traceback, a 401 "not UTF-8 text", a decode error naming no file)
    url, calls, _ = agent
    path = token_file(tmp_path / "odd-token", secret)
    with pytest.raises(DiscoveryError, match=r"odd-token holds a byte that is not printable"):
        discover(url, str(path), env={})
    assert main(["status", "--api", url, "--token-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "0x21-0x7e" in err and "Traceback" not in err, err
    assert calls == []


@pytest.mark.parametrize("secret", NOT_ASCII)
def test_a_token_in_the_environment_follows_the_token_file_rule(
    agent: tuple[str, list, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    secret: bytes,
) -> None:
    url, calls, _ = agent
    value = secret.decode("utf-8", "surrogateescape")  # (os.environ's own decoding)
    with pytest.raises(DiscoveryError, match=r"\$HAFLEET_API_TOKEN holds a byte that is not"):
        discover(env={"HAFLEET_API_TOKEN": value})
    monkeypatch.setenv("HAFLEET_API_TOKEN", value)
    assert main(["kv", "get", "a", "--api", url]) == 2
    assert "$HAFLEET_API_TOKEN" in capsys.readouterr().err
    assert calls == []


def test_a_short_token_in_the_environment_is_exit_2_as_a_short_file_is(
    agent: tuple[str, list, list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # (the file: exit 2 "holds 5 characters"; the variable: a 401 from the agent)
    url, calls, _ = agent
    short = token_file(tmp_path / "short", b"short")
    assert main(["status", "--api", url, "--token-file", str(short)]) == 2
    from_file = capsys.readouterr().err
    monkeypatch.setenv("HAFLEET_API_TOKEN", "short")
    assert main(["status", "--api", url]) == 2
    from_env = capsys.readouterr().err
    assert "holds 5 characters; at least 32 are required" in from_file
    assert "$HAFLEET_API_TOKEN holds 5 characters; at least 32 are required" in from_env
    assert calls == []


# ---- 2. the API URL: scheme://HOST[:PORT] and nothing else ----------------------------------


@pytest.mark.parametrize(
    ("suffix", "why"),
    [
        ("/v1", "has a path (/v1)"),
        ("/?x=1", "has a query"),
        ("?", "has a query"),
        ("#frag", "has a fragment"),
        ("/v1/kv/", "has a path"),
    ],
)
def test_an_api_url_with_a_path_query_or_fragment_is_refused(
    agent: tuple[str, list, list[str]], capsys: pytest.CaptureFixture[str], suffix: str, why: str
) -> None:
    # (`--api http://H:P/v1`: /v1/v1/kv/a, and its 404 read as "no key 'a'")
    url, calls, flags = agent
    with pytest.raises(ValueError, match=re.escape(why)):
        api_base_url(url + suffix)
    with pytest.raises(SystemExit) as exc:
        main(["kv", "get", "a", *flags, "--api", url + suffix])
    assert exc.value.code == 2
    assert why in capsys.readouterr().err
    assert calls == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://[::1", "is malformed (an IPv6 host without its ']')"),
        ("http://[zz]:7480", "is malformed ([zz] is not an IPv6 address)"),
        ("http://::1:7480", "an IPv6 host goes in brackets"),
        ("http://user:pw@127.0.0.1:7480", "has a user name or password"),
        ("http://:7480", "has no host"),
        ("http://127.0.0.1:99999", "has port '99999' (a port is 1..65535)"),
        ("http://127.0.0.1:0", "has port '0'"),
        ("http://127.0.0.1:x", "has port 'x'"),
        ("http://127.0.0.1:74\n80", "a space or a control character"),
    ],
)
def test_a_malformed_api_url_in_the_environment_is_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
    why: str,
) -> None:
    # (`HAFLEET_API_URL="http://[::1"`: a ValueError traceback)
    monkeypatch.setenv("HAFLEET_API_URL", url)
    monkeypatch.setenv("HAFLEET_API_TOKEN", TOKEN)
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert "$HAFLEET_API_URL" in err and why in err and "Traceback" not in err, err


def test_a_bare_api_url_and_one_trailing_slash_still_do() -> None:
    for url in (
        "http://127.0.0.1:7480",
        "https://a.example:7480/",
        "http://[::1]:7480/",
        "http://[fe80::1%25eth0]:7480",
        "http://h",
    ):
        assert api_base_url(url) == url.rstrip("/")


# ---- 3. empty flags and an agent config of the wrong types ----------------------------------


@pytest.mark.parametrize("flag", ["--token-file", "--ca-file", "--config"])
def test_an_empty_file_flag_is_exit_2(
    agent: tuple[str, list, list[str]], capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    # (`status --token-file ""`: a ConfigError, then KeyError: 'token')
    url, calls, flags = agent
    given = ["--api", url] if flag == "--token-file" else flags
    assert main(["status", *given, flag, ""]) == 2
    err = capsys.readouterr().err
    assert f"{flag} is empty" in err and "Traceback" not in err, err
    assert calls == []


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('token_file = ["x"]', "token_file must be a string without NUL characters, got ['x']"),
        ("token_file = 7", "token_file must be a string without NUL characters, got 7"),
        ("tls_ca_file = {a = 1}", "tls_ca_file must be a string"),
        ('bind = ["127.0.0.1"]', "bind must be a string"),
        ('api_port = "x"', "api_port must be an integer in 1..65535, got 'x'"),
        ("api_port = 70000", "api_port must be an integer in 1..65535, got 70000"),
        ('token_file = "a\\u0000b"', "token_file must be a string without NUL characters, got 'a"),
    ],
)
def test_an_agent_config_of_the_wrong_types_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, why: str
) -> None:
    # (`token_file = ["x"]`: TypeError: stat: path should be string)
    config = tmp_path / "agent.toml"
    config.write_text(line + "\n")
    with pytest.raises(DiscoveryError, match="the agent config"):
        discover(config=str(config), env={})
    assert main(["status", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert why in err and str(config) in err and "Traceback" not in err, err


# ---- 4. a stdout closed early ---------------------------------------------------------------


@pytest.mark.parametrize("argv", [["status"], ["kv", "get", "big"]])
def test_a_closed_stdout_ends_quietly_with_141(
    agent: tuple[str, list, list[str]], tmp_path: Path, argv: list[str]
) -> None:
    # (`status | head -c1`, `kv get BIGKEY | head -c1`: a BrokenPipeError traceback, exit 1)
    url, calls, flags = agent
    _Agent.kv["big"] = "x" * 1_000_000
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env["HOME"] = str(tmp_path / "home")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hafleet_agent", *argv, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader went away before anything was written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == EXIT_BROKEN_PIPE == 141, err
    assert err == "", err
    assert calls, "the command asked the agent"


# ---- 7. kv put: strict JSON, or else a string -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("-Infinity", "-Infinity"),
        ("1e999", "1e999"),
        ("-1e999", "-1e999"),
        ("[1, NaN]", "[1, NaN]"),
        ('{"a": 1e400}', '{"a": 1e400}'),
        ("1" + "0" * 5000, "1" + "0" * 5000),
        ("1.5", 1.5),
        ("1e308", 1e308),
        ('{"a": [1, null, true]}', {"a": [1, None, True]}),
        ('"NaN"', "NaN"),
        ("text", "text"),
    ],
)
def test_kv_put_sends_what_is_not_strict_json_as_a_string(
    agent: tuple[str, list, list[str]], text: str, sent: Any
) -> None:
    # (`kv put K NaN`: the agent refused "Out of range float values are not JSON compliant")
    assert parse_value(text) == sent
    _, calls, flags = agent
    assert main(["kv", "put", *flags, "--", "k", text]) == 0  # ("--": "-Infinity" is no flag)
    assert calls == [("PUT", "/v1/kv/k", {"value": sent})]


# ---- 8. an empty key ------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["get", ""], ["put", "", "x"], ["del", ""]])
def test_an_empty_key_is_exit_2_with_the_key_rule(
    agent: tuple[str, list, list[str]], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    # (`kv put "" x`: "HTTP 404: Not Found"; `kv get ""`: "no key ''", exit 1)
    _, calls, flags = agent
    with pytest.raises(SystemExit) as exc:
        main(["kv", *argv, *flags])
    assert exc.value.code == 2
    assert f"key '' is empty: {KEY_RULE}" in " ".join(capsys.readouterr().err.split())
    assert calls == []


# ---- 9. what the commands print -------------------------------------------------------------


def test_status_of_a_node_without_a_cluster_id_says_no_none(
    agent: tuple[str, list, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, flags = agent
    assert main(["status", *flags]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("cluster h2r  leader -") and "None" not in first, first
    # No leader: the columns only a leader writes are said to be maybe stale (a quorum lost
    # showed the members it lost as healthy, with nothing said).
    assert "no leader: HEALTHY, the load and the weights are as the last leader" in out, out


def test_kv_get_prints_text_as_is_and_controls_escaped(
    agent: tuple[str, list, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    # (`"v\u00e4rde \u2713"` for "värde ✓")
    _, _, flags = agent
    _Agent.kv["t"] = "värde ✓ \x1b[2J \x7f \u0085 \u202e \U000e0001"
    assert main(["kv", "get", "t", *flags]) == 0
    out = capsys.readouterr().out.strip()
    assert out == '"värde ✓ \\u001b[2J \\u007f \\u0085 \\u202e \\udb40\\udc01"', out
    assert json.loads(out) == _Agent.kv["t"]


def test_json_text_escapes_everything_for_a_stdout_that_cannot_show_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Latin1:
        encoding = "ascii"

    monkeypatch.setattr(sys, "stdout", Latin1())
    assert json_text({"k": "värde ✓"}) == '{"k": "v\\u00e4rde \\u2713"}'
    monkeypatch.undo()
    assert json_text("\ud800") == '"\\ud800"'  # (a lone surrogate cannot be written as is)
