"""The HAProxy configuration generator and the server state file: rendering, validation,
parsing; HAProxy itself accepts every rendered strategy; a seamless reload keeps the
servers, weights and drain states the syncer set at run time."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from balancer_lab import HAPROXY, HAProxy

from hafleet_agent.balancer.haproxy_cli import main as haproxy_cli
from hafleet_agent.balancer.haproxy_config import (
    ALGORITHMS,
    STRATEGIES,
    ConfigError,
    ServerLine,
    Settings,
    StateParseError,
    parse_servers_state,
    render,
    servers_from_state,
)
from hafleet_agent.balancer.process import save_state

HEADER = (
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health "
    "srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord "
    "srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port"
)
STATE = "\n".join(
    [
        "1",
        HEADER,
        "3 app 1160994917 n1 127.0.0.1 2 0 99 192 1 6 3 4 6 0 0 1 - 8000 - 0 0 - - 0",
        "3 app 1539722035 n2 127.0.0.2 2 8 0 96 1 6 3 4 6 0 0 1 - 8000 - 0 0 - - 0",
        "3 app 7 n3 ::1 0 1 32 32 0 1 0 0 2 0 0 1 - 8001 - 0 0 - - 0",
        "4 other 1 x 10.0.0.1 2 0 1 1 0 1 0 0 2 0 0 1 - 80 - 0 0 - - 0",
        "",
        "",
    ]
)


def settings(**kw) -> Settings:
    base = dict(
        backend="app",
        bind=["127.0.0.1:8080"],
        socket_path="/run/haproxy/admin.sock",
        state_file="/var/lib/haproxy/servers.state",
    )
    return Settings(**{**base, **kw})


def test_render_has_the_runtime_api_state_file_and_algorithm() -> None:
    text = render(settings(strategy="random", health_path="/health"))
    assert "stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners" in text
    assert "server-state-file /var/lib/haproxy/servers.state" in text
    assert "load-server-state-from-file global" in text
    assert "backend app\n" in text and "default_backend app" in text
    assert "balance random(2)" in text
    assert "option httpchk GET /health" in text
    assert "server-template" not in text and "\n    server " not in text


@pytest.mark.parametrize(
    ("strategy", "algo"),
    [
        ("weighted", "roundrobin"),
        ("roundrobin", "roundrobin"),
        ("random", "random(2)"),
        ("leastconn", "leastconn"),
    ],
)
def test_strategy_mapping(strategy: str, algo: str) -> None:
    assert ALGORITHMS[strategy] == algo
    assert f"    balance {algo}\n" in render(settings(strategy=strategy))


def test_render_servers_and_ipv6() -> None:
    text = render(
        settings(
            bind=["[::1]:8443", "127.0.0.1:8080"],
            servers=[ServerLine("n1", "10.0.0.1", 80, 1001, 5), ServerLine("n2", "::1", 81, 9, 0)],
        )
    )
    assert "bind [::1]:8443\n    bind 127.0.0.1:8080" in text
    assert "    server n1 10.0.0.1:80 id 1001 weight 5 check\n" in text
    assert "    server n2 [::1]:81 id 9 weight 0 check\n" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "fastest"}, "strategy"),
        ({"backend": "has space"}, "backend name"),
        ({"backend": "x" * 65}, "backend name"),
        ({"frontend": "app"}, "different names"),
        ({"bind": []}, "bind"),
        ({"bind": ["127.0.0.1"]}, "ADDR:PORT"),
        ({"bind": ["127.0.0.1:0"]}, "ADDR:PORT"),
        ({"socket_path": "relative.sock"}, "absolute"),
        ({"state_file": "/a b"}, "absolute"),
        ({"health_path": "health"}, "health path"),
        ({"servers": [ServerLine("n1", "h", 1, 5, 1), ServerLine("n1", "h", 2, 6, 1)]}, "twice"),
        ({"servers": [ServerLine("n1", "h", 1, 5, 1), ServerLine("n2", "h", 2, 5, 1)]}, "twice"),
        ({"servers": [ServerLine("n1", "h", 1, 5, 257)]}, "weight"),
        ({"servers": [ServerLine("n 1", "h", 1, 5, 1)]}, "server name"),
    ],
)
def test_render_refuses_bad_settings(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        render(settings(**change))


def test_parse_servers_state() -> None:
    states = parse_servers_state(STATE)
    assert [s.name for s in states] == ["n1", "n2", "n3", "x"]
    n1, n2, n3, _ = states
    assert (n1.id, n1.addr, n1.port, n1.uweight, n1.iweight) == (
        1160994917,
        "127.0.0.1",
        8000,
        99,
        192,
    )
    assert not n1.maint and not n1.drain and not n1.check_disabled
    assert n2.drain and not n2.maint
    assert n3.maint and n3.check_disabled  # added at run time, never enabled


@pytest.mark.parametrize(
    "text",
    ["", "2\n# be_id\n", "1\n3 app 1 n1\n", "1\n# be_id be_name srv_id\n3 app x\n"],
)
def test_parse_servers_state_refuses_garbage(text: str) -> None:
    with pytest.raises(StateParseError):
        parse_servers_state(text)


def test_servers_from_state_carries_the_initial_weight() -> None:
    """HAProxy restores the saved current weight only when the configured weight equals the
    saved initial one: the lines carry srv_iweight, not srv_uweight."""
    assert servers_from_state(STATE, "app") == [
        ServerLine("n1", "127.0.0.1", 8000, 1160994917, 192),
        ServerLine("n2", "127.0.0.2", 8000, 1539722035, 96),
        ServerLine("n3", "::1", 8001, 7, 32),
    ]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_haproxy_accepts_the_rendered_configuration(tmp_path: Path, strategy: str) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        render(
            settings(
                strategy=strategy,
                socket_path=str(tmp_path / "s.sock"),
                state_file=str(tmp_path / "state"),
                servers=servers_from_state(STATE, "app"),
                health_path="/health",
            )
        )
    )
    done = subprocess.run(
        [HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_cli_render_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``hafleet-haproxy render``: the configuration from the role's settings file, with the
    servers of the state file when asked; a bad setting is an error message and exit 1."""
    state = tmp_path / "state"
    state.write_text(STATE)
    out = tmp_path / "h.cfg"

    def settings(**change: object) -> str:
        path = tmp_path / "haproxy.json"
        value = {"backend": "app", "bind": ["127.0.0.1:8080"], "socket": "/s"}
        value.update({"state_file": str(state), **change})
        path.write_text(json.dumps(value))
        return str(path)

    assert haproxy_cli(["render", "--settings", settings(), "--with-servers", "-o", str(out)]) == 0
    assert "server n2 127.0.0.2:8000 id 1539722035 weight 96 check" in out.read_text()
    assert (out.stat().st_mode & 0o777) == 0o640
    assert haproxy_cli(["render", "--settings", settings(), "-o", str(out)]) == 0
    assert "server " not in out.read_text().split("backend app")[1]
    none = settings(state_file=str(tmp_path / "none"))
    assert haproxy_cli(["render", "--settings", none, "--with-servers"]) == 0
    assert "server " not in capsys.readouterr().out.split("backend app")[1]
    assert haproxy_cli(["render", "--settings", settings(state_file="relative")]) == 1
    assert "absolute path" in capsys.readouterr().err
    with pytest.raises(OSError):
        save_state(str(tmp_path / "nope.sock"), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


@pytest.mark.timeout(60)
def test_reload_keeps_runtime_servers_weights_and_drains(tmp_path: Path) -> None:
    """Servers added, weighted and drained at run time survive a seamless reload."""
    hp = HAProxy(tmp_path, "127.0.0.1", 0, backend="app", health_path=None)
    # any free port: the frontend is not used here
    hp.port = _free_port()
    try:
        hp.start()
        for cmd in (
            "add server app/n1 127.0.0.1:9 id 1001 weight 10 check",
            "add server app/n2 127.0.0.1:9 id 1002 weight 20 check",
            "add server app/n3 127.0.0.1:9 id 1003 weight 30",
            "set server app/n1 state ready",
            "set server app/n1 weight 77",
            "set server app/n2 state drain",
            "set server app/n2 weight 0",
        ):
            assert hp.command(cmd).strip() in ("", "New server registered."), cmd
        before = hp.servers()
        hp.reload()
        after = hp.servers()
        assert set(after) == {"n1", "n2", "n3"}
        for name in after:
            b, a = before[name], after[name]
            assert (a.id, a.addr, a.port, a.uweight) == (b.id, b.addr, b.port, b.uweight), name
            assert (a.maint, a.drain) == (b.maint, b.drain), name
        assert after["n1"].uweight == 77 and after["n2"].drain and after["n3"].maint
        # and they can still be deleted at run time, like the dynamic servers they were
        assert hp.command("set server app/n3 state maint").strip() == ""
        assert hp.command("del server app/n3").strip() == "Server deleted."
    finally:
        hp.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
