"""``hafleet-agent run`` given odd configuration (a hostile review): every numeric setting
has bounds (TOML's ``nan`` and ``inf`` fail them), an empty data dir is not the current
directory, a data dir that is a file or another node's is exit 2 (bad configuration: neither
systemd nor supervise.py starts it again), and a token file holds printable ASCII only. Each
is refused before anything listens; the agent never starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hafleet_agent.config import (
    RANGES,
    TOKEN_RULE,
    AgentConfig,
    ConfigError,
    load,
    read_secret,
    validate,
)

SECRET = b"s" * 40


def secret_file(path: Path, value: bytes = SECRET) -> Path:
    path.write_bytes(value + b"\n")
    os.chmod(path, 0o600)
    return path


def load_toml(tmp_path: Path, text: str) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text('node_id = "n1"\n' + text + "\n")
    return load(str(path), {})


# ---- 6. the numeric settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_body_bytes = 0", "max_body_bytes must be in 1024..67108864 (bytes), got 0"),
        ("max_body_bytes = 1073741824", "max_body_bytes must be in 1024..67108864"),
        ("autopilot_dead_after_s = -1", "autopilot_dead_after_s must be in 1..604800"),
        ("autopilot_dead_after_s = nan", "autopilot_dead_after_s must be in 1..604800"),
        ("autopilot_dead_after_s = inf", "autopilot_dead_after_s must be in 1..604800"),
        ("snapshot_log_ratio = nan", "snapshot_log_ratio must be in 0..16"),
        ("snapshot_log_ratio = -inf", "snapshot_log_ratio must be in 0..16"),
        ("drain_timeout_s = nan", "drain_timeout_s must be in 0..3600"),
        ("heartbeat_ms = 0", "heartbeat_ms must be in 1..60000"),
        ("heartbeat_ms = 9223372036854775807", "heartbeat_ms must be in 1..60000"),
        ("election_timeout_ms = 100000000", "election_timeout_ms must be in 2..600000"),
        ("service_check_interval_ms = 5", "service_check_interval_ms must be in 10..3600000"),
        ("service_check_timeout_ms = 99999999", "service_check_timeout_ms must be in 10..3600000"),
        ("service_check_rise = 0", "service_check_rise must be in 1..100"),
        ("service_check_fall = 101", "service_check_fall must be in 1..100"),
        ("unreachable_after_ms = -1", "unreachable_after_ms must be in 0..3600000"),
        ("reachable_after_ms = 3600001", "reachable_after_ms must be in 0..3600000"),
        ("snapshot_entries = 9", "snapshot_entries must be at least 10"),
        ("snapshot_log_bytes = 0", "snapshot_log_bytes must be at least"),
        ("quota_bytes = -1", "quota_bytes must be >= 0"),
        ("health_max_apply_lag = -1", "health_max_apply_lag must be >= 0"),
        ("weight_overrides = {n2 = true}", "weight_overrides['n2'] must be an integer in 0..256"),
        ("weight_overrides = {n2 = 257}", "weight_overrides['n2'] must be an integer in 0..256"),
    ],
)
def test_a_numeric_setting_out_of_its_bounds_is_refused(
    tmp_path: Path, line: str, message: str
) -> None:
    # (`max_body_bytes = 0` answered every write 413; `autopilot_dead_after_s = -1` was taken)
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_toml(tmp_path, line)


def test_the_ends_of_each_range_and_the_defaults_are_taken(tmp_path: Path) -> None:
    validate(AgentConfig(node_id="n1"))
    for name, (low, high, _) in RANGES.items():
        for value in (low, high):
            cfg = AgentConfig(node_id="n1", **{name: value})
            if name == "heartbeat_ms":
                cfg.election_timeout_ms = max(cfg.election_timeout_ms, value + 1)
                cfg.unreachable_after_ms = 0
            if name == "election_timeout_ms":
                cfg.heartbeat_ms = 1
            validate(cfg)


# ---- 5. the data dir ------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["", "   "])
def test_an_empty_data_dir_is_refused(tmp_path: Path, given: str) -> None:
    # (`--data-dir ""`: the Raft log and LOCK went to the current directory)
    with pytest.raises(ConfigError, match="data_dir is empty"):
        load(None, {"node_id": "n1", "data_dir": given})
    with pytest.raises(ConfigError, match="data_dir is empty"):
        load_toml(tmp_path, f"data_dir = {json.dumps(given)}")


def _run(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``hafleet-agent run`` with a cluster key and token of the rules and ``flags``; every
    case here stops before anything listens (a timeout: it started, which it must not)."""
    key = secret_file(tmp_path / "key")
    token = tmp_path / "token"
    if not token.exists():
        secret_file(token, b"t" * 40)
    argv = ["run", "--node-id", "n1", "--no-mdns", "--bind", "127.0.211.1"]
    argv += ["--key-file", str(key), "--token-file", str(token), *flags]
    return subprocess.run(
        [sys.executable, "-m", "hafleet_agent", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )


def test_an_empty_data_dir_flag_writes_nothing_in_the_current_directory(tmp_path: Path) -> None:
    done = _run(tmp_path, "--data-dir", "")
    assert done.returncode == 2, done.stderr
    assert "data_dir is empty" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key", "token"]


@pytest.mark.parametrize("under", [False, True])
def test_a_data_dir_that_is_a_file_is_exit_2_saying_so(tmp_path: Path, under: bool) -> None:
    # (`cannot start: [Errno 17] File exists: '/tmp/x/key'`, exit 1)
    (tmp_path / "afile").write_text("x")
    data_dir = tmp_path / "afile" / "sub" if under else tmp_path / "afile"
    done = _run(tmp_path, "--data-dir", str(data_dir))
    assert done.returncode == 2, done.stderr
    assert f"data_dir {data_dir} is not a directory" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("meta", "whose"),
    [
        ({"node_id": "n9", "cluster": "hafleet"}, "belongs to node 'n9' of cluster 'hafleet'"),
        ({"node_id": "n1", "cluster": "other"}, "belongs to node 'n1' of cluster 'other'"),
    ],
)
def test_a_data_dir_of_another_node_or_cluster_is_exit_2(
    tmp_path: Path, meta: dict[str, str], whose: str
) -> None:
    # (exit 1 before: systemd's unit and supervise.py restarted it for ever; 2 they do not)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "agent.json").write_text(json.dumps({**meta, "cluster_id": None}))
    done = _run(tmp_path, "--data-dir", str(data_dir))
    assert done.returncode == 2, done.stderr
    assert whose in done.stderr and "use another --data-dir" in done.stderr, done.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == ["agent.json"]


# ---- 1. the tokens the agent starts with ----------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("✓".encode() * 40, id="utf8"),
        pytest.param("é".encode("latin-1") * 40, id="latin1"),
        pytest.param(b"\xc0" * 40, id="binary"),
        pytest.param(b"a" * 20 + b"\t" + b"a" * 20, id="inner-tab"),
    ],
)
def test_a_token_that_is_not_printable_ascii_is_refused_at_start(
    tmp_path: Path, secret: bytes
) -> None:
    # (`run --token-file F` with 40 '✓' started; every client then failed in its own way)
    path = secret_file(tmp_path / "token", secret)
    for what in ("token", "read token"):
        with pytest.raises(ConfigError, match=f"^{what} file {path} holds a byte that is not"):
            read_secret(str(path), what)
    assert read_secret(str(path), "key") == secret  # (a cluster key is any 32 bytes or more)
    done = _run(tmp_path, "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2, done.stderr
    assert str(path) in done.stderr and TOKEN_RULE in done.stderr, done.stderr
    assert not (tmp_path / "data").exists()


def test_a_second_ctrl_c_after_a_finished_stop_is_exit_0_not_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop's signal handlers go with the loop: a second Ctrl-C ~50 ms after the first
    # raised KeyboardInterrupt in the teardown of a stop that had finished (exit 130).
    import asyncio

    from hafleet_agent import cli, run

    key, token = tmp_path / "key", tmp_path / "token"
    for f in (key, token):
        f.write_text("k" * 40)
        f.chmod(0o600)
    argv = ["run", "--node-id", "n1", "--data-dir", str(tmp_path / "d"), "--key-file", str(key)]
    argv += ["--token-file", str(token), "--no-mdns", "--bind", "127.0.0.1"]

    def interrupted(coro, finished: bool):  # noqa: ANN001, ANN202
        coro.close()
        if finished:
            run.STOPPED.append(0)
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "setup_logging", lambda fmt: None)
    for finished, code in ((True, 0), (False, 130)):
        monkeypatch.setattr(run, "STOPPED", [])
        monkeypatch.setattr(asyncio, "run", lambda coro, f=finished: interrupted(coro, f))
        assert cli.main(argv) == code
