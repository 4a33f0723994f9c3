"""Backups against the hostile review of the twenty-first session (docs/operations.md):

- ``snapshot save`` followed a redirect and sent the admin token to whatever host the 3xx
  named (urllib's default handler; the other clients refuse redirects): refused now, with
  the redirect named, the other host never asked;
- ``snapshot save`` held the whole answer in memory several times over (a 20 MB backup took
  107 MB): streamed to its temporary file and checked there;
- ``snapshot restore`` took a file whose checksum was right but whose KV records were not
  records (a value where a record goes, an index that is no integer or past the state's):
  the agent then answered 500 to every read of such a key and every listing of its prefix;
- ``snapshot restore`` kept the old members' maintenance marks, so a restored fleet came
  back with members drained that nothing would put back in service.

The CLI against stand-in agents on loopback, and real files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
from harness import run_cli
from stub_agent import secret_file, serving

from hafleet_agent.backupfile import Backup, decode_backup, encode_backup
from hafleet_agent.commands import encode_command
from hafleet_agent.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from hafleet_agent.state import StateMachine, encode_json, member_context
from hafleet_agent.wal import DiskStorage


def _state(values: dict[str, object]) -> StateMachine:
    sm = StateMachine()
    ctx = member_context("10.0.0.1:7400", "10.0.0.1:7480")
    sm.apply_conf(1, ConfChange(ConfChangeType.ADD_VOTER, "a", ctx))
    for i, (key, value) in enumerate(values.items(), start=2):
        data = encode_command("kv_put", key=key, value=value)
        sm.apply_entry(Entry(index=i, term=2, type=EntryType.NORMAL, data=data))
    return sm


def _backup(body: bytes, index: int) -> bytes:
    return encode_backup(
        Backup("prod", "prod-0123456789abcdef", "a", index, 2, 1_700_000_000, body)
    )


def _restore(file: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "snapshot", "restore", str(file), "--data-dir", str(data_dir), "--node-id", "r1",
        "--cluster", "prod", "--raft-addr", "127.0.0.1:7400", "--api-addr", "127.0.0.1:7480",
    )  # fmt: skip


class _Sink(BaseHTTPRequestHandler):
    """Another host: records every request's Authorization header."""

    seen: ClassVar[list[str | None]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.seen.append(self.headers.get("Authorization"))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_save_refuses_a_redirect_and_sends_the_token_to_no_other_host(tmp_path: Path) -> None:
    token = secret_file(tmp_path / "token", "s" * 40)
    _Sink.seen = []
    with serving(_Sink) as sink:

        class Redirect(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(302)
                self.send_header("Location", f"{sink}/v1/snapshot")
                self.send_header("Content-Length", "0")
                self.end_headers()

        with serving(Redirect) as api:
            target = tmp_path / "out.snap"
            done = run_cli(
                "snapshot", "save", "--api", api, "--token-file", str(token), str(target)
            )
    assert done.returncode == 1, done.stderr
    assert "302" in done.stderr and "not followed" in done.stderr, done.stderr
    assert f"a redirect to {sink}/v1/snapshot" in done.stderr, done.stderr
    assert _Sink.seen == []  # the other host was never asked (it got the token before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]  # nothing written


class _Snapshots(BaseHTTPRequestHandler):
    """A stand-in agent answering ``body`` to ``GET /v1/snapshot``."""

    body: ClassVar[bytes] = b""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        view = memoryview(self.body)
        for at in range(0, len(view), 1 << 20):
            self.wfile.write(view[at : at + (1 << 20)])


# The CLI's peak memory: VmHWM, its own address space's high-water mark (ru_maxrss would
# count the parent's pages it started with, before the exec).
_MEASURED = (
    "import sys\n"
    "from hafleet_agent import cli\n"
    "try:\n"
    "    rc = cli.main(sys.argv[1:])\n"
    "finally:\n"
    "    hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM:')][0].split()[1]\n"
    "    print('VMHWM_KB', hwm, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def test_save_streams_the_answer_and_checks_it_before_the_rename(tmp_path: Path) -> None:
    """A 64 MiB backup is saved with the process's peak memory below the backup's own size
    (the whole answer was held several times over: ~5x), byte for byte, checked; the same
    answer with one byte flipped leaves the last good file as it was, and no temporary
    file."""
    token = secret_file(tmp_path / "token", "s" * 40)
    sm = _state({f"app/big{i}": "x" * 500_000 for i in range(135)})  # (a value's limit: 512 KiB)
    raw = _backup(sm.snapshot(), sm.index)
    _Snapshots.body = raw
    target = tmp_path / "fleet.snap"
    with serving(_Snapshots) as api:
        done = subprocess.run(
            [sys.executable, "-c", _MEASURED, "snapshot", "save", "--api", api,
             "--token-file", str(token), "--json", str(target)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert target.read_bytes() == raw
        header = json.loads(done.stdout)
        assert header["size"] == len(raw) and header["index"] == sm.index
        assert header["sha256"] == decode_backup(raw).sha256
        peak = int(done.stderr.split("VMHWM_KB")[1].split()[0]) * 1024
        assert peak < len(raw), f"peak RSS {peak >> 20} MiB for a {len(raw) >> 20} MiB backup"

        flipped = bytearray(raw)
        flipped[len(raw) // 2] ^= 1
        _Snapshots.body = bytes(flipped)
        done = run_cli("snapshot", "save", "--api", api, "--token-file", str(token), str(target))
    assert done.returncode == 1, done.stderr
    assert "not a whole snapshot: corrupt: the SHA-256 checksum" in done.stderr, done.stderr
    assert target.read_bytes() == raw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.snap", "token"]


def _forged_kv(change: dict[str, Any]) -> bytes:
    """A backup of a good state whose KV records are then changed, sealed with a right
    checksum (what a hand-edited file or a broken agent gives)."""
    sm = _state({"app/good": 1, "app/bad": 2})
    obj = json.loads(sm.snapshot())
    obj["kv"].update(change)
    return _backup(encode_json(obj), sm.index)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"app/bad": 5}, "is not a record with a value"),
        ({"app/bad": {"value": 1, "create_index": 2}}, "no integer create_index and modify_index"),
        ({"app/bad": {"value": 1, "create_index": 2, "modify_index": 10**30}}, "outside 1..3"),
        ({"app/bad": {"value": 1, "create_index": 0, "modify_index": 2}}, "outside 1..3"),
        ({"app/bad": {"value": 1, "create_index": 3, "modify_index": 2}}, "outside 1..3"),
        ({"app/bad": {"value": 1, "create_index": True, "modify_index": 2}}, "no integer"),
        ({"app/bad": {"create_index": 2, "modify_index": 2}}, "is not a record with a value"),
    ],
)
def test_restore_refuses_kv_records_a_put_never_makes(
    tmp_path: Path, change: dict[str, Any], why: str
) -> None:
    file = tmp_path / "forged.snap"
    file.write_bytes(_forged_kv(change))
    assert run_cli("snapshot", "inspect", str(file)).returncode == 0  # intact bytes
    done = _restore(file, tmp_path / "data")
    assert done.returncode == 2, done.stderr
    assert "the KV record of key 'app/bad' " in done.stderr and why in done.stderr, done.stderr
    assert "nothing was written" in done.stderr
    assert not (tmp_path / "data").exists()


def test_restore_drops_the_old_members_maintenance_marks_and_names_them(tmp_path: Path) -> None:
    marks = {"maintenance/web2": {"since": 1.0, "reason": "stopped by playbooks/stop.yml"}}
    sm = _state({"app/k": 1, **marks, "maintenance/web1": {"since": 2.0, "reason": "disk"}})
    file = tmp_path / "fleet.snap"
    file.write_bytes(_backup(sm.snapshot(), sm.index))
    done = _restore(file, tmp_path / "data")
    assert done.returncode == 0, done.stderr
    assert "the maintenance marks of web1, web2 dropped" in done.stdout, done.stdout
    storage = DiskStorage.open(tmp_path / "data")
    try:
        snap = storage.snapshot
    finally:
        storage.close()
    restored = StateMachine.from_snapshot(snap.data, snap.meta.index)
    assert restored.kv_keys() == ["app/k"]
