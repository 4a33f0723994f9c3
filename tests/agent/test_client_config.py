"""The client subcommands find the agent with no flags (client_config.py), and the operator's
verbs (cli_ops.py: maintenance, transfer-leadership, remove-member) send the right requests.
No agent runs: a small HTTP stand-in on 127.0.0.1 records what the CLI sends."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stub_agent import Recording, no_local_agent, secret_file, serving

from hafleet_agent import client_config
from hafleet_agent.cli import main
from hafleet_agent.client_config import DiscoveryError, discover

TOKEN = "t" * 40
NO_ENV: dict[str, str] = {}


def secret(path: Path, value: str = TOKEN) -> Path:
    return secret_file(path, value)


@pytest.fixture(autouse=True)
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_local_agent(tmp_path, monkeypatch)


def agent_toml(path: Path, token_file: Path, **extra: Any) -> Path:
    lines = [
        'node_id = "n1"',
        f'token_file = "{token_file}"',
        *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_flags_win_and_the_default_url_is_the_last_resort(tmp_path: Path) -> None:
    tok = secret(tmp_path / "token")
    end = discover("https://10.0.0.5:7480", str(tok), "/ca.pem", env=NO_ENV)
    assert (end.api, end.token, end.ca_file) == ("https://10.0.0.5:7480", TOKEN.encode(), "/ca.pem")
    end = discover(None, str(tok), env=NO_ENV)
    assert end.api == "http://127.0.0.1:7480" and end.ca_file is None


def test_the_environment_names_are_the_modules(tmp_path: Path) -> None:
    tok = secret(tmp_path / "token")
    env = {
        "HAFLEET_API_URL": "https://10.0.0.6:7480/",
        "HAFLEET_API_TOKEN_FILE": str(tok),
        "HAFLEET_CA_FILE": "/ca.pem",
    }
    end = discover(env=env)
    assert (end.api, end.token, end.ca_file) == ("https://10.0.0.6:7480", TOKEN.encode(), "/ca.pem")
    assert end.sources["token"] == "$HAFLEET_API_TOKEN_FILE"
    # the CLI's older name still works; the token itself in HAFLEET_API_TOKEN too
    assert discover(env={"HAFLEET_TOKEN_FILE": str(tok)}).token == TOKEN.encode()
    assert discover(env={"HAFLEET_API_TOKEN": "u" * 40}).token == b"u" * 40
    with pytest.raises(DiscoveryError, match="HAFLEET_API_URL"):
        discover(env={"HAFLEET_API_URL": "10.0.0.6:7480", "HAFLEET_API_TOKEN": "u" * 40})


def test_the_local_agents_config_gives_url_token_and_ca(tmp_path: Path) -> None:
    tok = secret(tmp_path / "token")
    conf = agent_toml(
        tmp_path / "agent.toml",
        tok,
        bind="10.77.0.11",
        api_port=7481,
        tls_ca_file="/etc/hafleet-agent/ca.crt",
    )
    end = discover(config=str(conf), env=NO_ENV)
    assert end.api == "https://10.77.0.11:7481"
    assert end.token == TOKEN.encode() and end.ca_file == "/etc/hafleet-agent/ca.crt"
    # plain mode, a wildcard bind: the loopback address; advertise wins over bind
    agent_toml(conf, tok, bind="0.0.0.0")
    assert discover(config=str(conf), env=NO_ENV).api == "http://127.0.0.1:7480"
    agent_toml(conf, tok, bind="0.0.0.0", advertise="10.1.2.3")
    assert discover(config=str(conf), env=NO_ENV).api == "http://10.1.2.3:7480"
    # HAFLEET_CONFIG names it too; a flag still wins over the config
    end = discover("http://127.0.0.9:7480", env={"HAFLEET_CONFIG": str(conf)})
    assert end.api == "http://127.0.0.9:7480" and end.token == TOKEN.encode()


def test_the_role_and_lab_paths_are_tried_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = secret(tmp_path / "token")
    for node in ("hafleet-node2", "hafleet-node1"):
        (tmp_path / "lab" / node / "etc").mkdir(parents=True)
        agent_toml(tmp_path / "lab" / node / "etc/agent.toml", tok, bind=f"10.77.0.{node[-1]}")
    monkeypatch.setattr(
        client_config,
        "AGENT_CONFIGS",
        (str(tmp_path / "etc/agent.toml"), str(tmp_path / "lab/*/etc/agent.toml")),
    )
    end = discover(env=NO_ENV)
    assert end.api == "http://10.77.0.1:7480"  # the first lab node, in order
    (tmp_path / "etc").mkdir()
    agent_toml(tmp_path / "etc/agent.toml", tok, bind="10.0.0.1")
    assert discover(env=NO_ENV).api == "http://10.0.0.1:7480"  # the host's own agent first


def test_the_controllers_secrets(tmp_path: Path) -> None:
    home = tmp_path / "home" / ".hafleet" / "prod"
    home.mkdir(parents=True)
    secret(home / "token")
    (home / "ca.crt").write_text("x")
    end = discover(env={"HAFLEET_API_URL": "https://10.0.0.7:7480"})
    assert end.token == TOKEN.encode() and end.ca_file == str(home / "ca.crt")
    (tmp_path / "home" / ".hafleet" / "other").mkdir()
    secret(tmp_path / "home" / ".hafleet" / "other" / "token")
    with pytest.raises(DiscoveryError):  # two clusters: which one is not guessed
        discover(env=NO_ENV)


def test_nothing_found_names_every_place_looked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    for place in (
        "--token-file",
        "$HAFLEET_API_TOKEN_FILE",
        "$HAFLEET_CONFIG",
        "none/*.toml",  # (AGENT_CONFIGS, as patched)
        "~/.hafleet/*/token",
    ):
        assert place in err, err


def test_a_token_file_of_the_wrong_mode_says_where_it_came_from(tmp_path: Path) -> None:
    tok = secret(tmp_path / "token")
    os.chmod(tok, 0o644)
    with pytest.raises(DiscoveryError, match=r"0644.*HAFLEET_API_TOKEN_FILE"):
        discover(env={"HAFLEET_API_TOKEN_FILE": str(tok)})


# ---- the verbs -------------------------------------------------------------------------------


class _Recorder(Recording):
    token = TOKEN

    def route(self, body: Any) -> tuple[Any, int]:
        if self.path.split("?")[0].endswith("/maintenance"):
            on = self.command == "PUT"
            reason = (body or {}).get("reason")
            payload, status = (
                {"id": "n2", "maintenance": on, "reason": reason, "changed": True},
                200,
            )
        elif self.path == "/v1/leadership/transfer":
            payload, status = {"leader_id": (body or {}).get("to") or "n3"}, 200
        else:
            payload, status = {"id": "n3", "removed": True, "index": 9}, 200
        return payload, status


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[str, list]]:
    calls: list[tuple[str, str, Any]] = []
    _Recorder.calls = calls
    with serving(_Recorder) as url:
        yield url, calls


def test_the_verbs_send_their_requests(
    agent: tuple[str, list], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, calls = agent
    opts = ["--api", url, "--token-file", str(secret(tmp_path / "token"))]
    assert main(["maintenance", "on", "n2", "--reason", "disk", *opts]) == 0
    assert "n2 is now in maintenance (disk)" in capsys.readouterr().out
    assert main(["maintenance", "on", "n2", "--force", *opts]) == 0
    assert "n2 is now in maintenance" in capsys.readouterr().out
    assert main(["maintenance", "off", "n2", *opts]) == 0
    assert "n2 is out of maintenance" in capsys.readouterr().out
    assert main(["transfer-leadership", "--to", "n1", *opts]) == 0
    assert capsys.readouterr().out.strip() == "leader: n1"
    assert main(["transfer-leadership", *opts]) == 0
    assert main(["remove-member", "n3", "--drain-timeout", "5", *opts]) == 0
    assert "n3 was removed from the group" in capsys.readouterr().out
    assert calls == [
        ("PUT", "/v1/members/n2/maintenance", {"reason": "disk"}),
        ("PUT", "/v1/members/n2/maintenance?force=true", {}),
        ("DELETE", "/v1/members/n2/maintenance", None),
        ("POST", "/v1/leadership/transfer", {"to": "n1"}),
        ("POST", "/v1/leadership/transfer", {"to": None}),
        ("DELETE", "/v1/members/n3?drain_timeout=5s", None),
    ]


def test_the_verbs_refuse_a_bad_id_before_asking(
    agent: tuple[str, list], capsys: pytest.CaptureFixture[str]
) -> None:
    url, calls = agent
    for argv in (["maintenance", "on", "-x"], ["remove-member", "a/b"], ["maintenance", "n2"]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--api", url])
        assert exc.value.code == 2
    assert calls == []


def test_an_api_error_is_exit_1_with_the_agents_message(
    agent: tuple[str, list], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = agent
    wrong = secret(tmp_path / "wrong", "w" * 40)
    assert main(["maintenance", "on", "n2", "--api", url, "--token-file", str(wrong)]) == 1
    assert "wrong API token" in capsys.readouterr().err


def test_a_stopped_first_lab_node_is_passed_over(
    agent: tuple[str, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab's configs in order: node1's agent refuses (stopped), node2's answers."""
    import socket

    url, calls = agent
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    tok = secret(tmp_path / "token")
    for node, port in (("n1", closed), ("n2", int(url.rsplit(":", 1)[1]))):
        (tmp_path / "lab" / node).mkdir(parents=True)
        agent_toml(tmp_path / "lab" / node / "agent.toml", tok, bind="127.0.0.1", api_port=port)
    monkeypatch.setattr(client_config, "AGENT_CONFIGS", (str(tmp_path / "lab/*/agent.toml"),))
    end = discover(env=NO_ENV)
    assert end.api == f"http://127.0.0.1:{closed}" and end.alternates == [url]
    assert main(["maintenance", "on", "n2"]) == 0
    assert calls == [("PUT", "/v1/members/n2/maintenance", {})]


def test_leave_never_passes_over_to_another_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``leave`` removes the agent it reaches: with the first lab node down it fails, it does
    not make the next one leave."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    tok = secret(tmp_path / "token")
    for node, port in zip(("n1", "n2"), ports, strict=True):
        (tmp_path / "lab" / node).mkdir(parents=True)
        agent_toml(tmp_path / "lab" / node / "agent.toml", tok, bind="127.0.0.1", api_port=port)
    monkeypatch.setattr(client_config, "AGENT_CONFIGS", (str(tmp_path / "lab/*/agent.toml"),))
    assert main(["leave"]) == 1
    assert f"127.0.0.1:{ports[0]}" in capsys.readouterr().err
