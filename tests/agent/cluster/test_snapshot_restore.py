"""Backup and disaster recovery (issue 19; docs/operations.md): ``GET /v1/snapshot``,
``hafleet-agent snapshot save|restore|inspect`` and the file format (backupfile.py).

The acceptance test: 3 agents, 200 acknowledged writes, ``snapshot save``, every member
killed and its data dir wiped, ``snapshot restore`` into a new one-member group, two fresh
agents join: every key reads back from every member and the group has 3 voters. The other
tests refuse what must be refused (a corrupt or truncated file, a data dir in use) without
writing anything, and pin the format.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from harness import RAFT_PORT, Cluster, run_cli

from hafleet_agent.backupfile import (
    FORMAT_VERSION,
    MAGIC,
    Backup,
    BackupError,
    decode_backup,
    encode_backup,
)
from hafleet_agent.commands import encode_command
from hafleet_agent.node.meta import load_cluster_id
from hafleet_agent.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from hafleet_agent.state import StateMachine, member_context
from hafleet_agent.wal import DiskStorage

WRITES = 200
RUNTIME_KEYS = (
    "balancer/registered",
    "balancer/registered/lb1",
    "balancer/drained/lb1/n2",
    "hafleet/lock",  # a playbook run's lock (the collection's fleet_lock)
)


def _keys(cluster: Cluster, node: str, stale: bool = False) -> dict[str, object]:
    query = "?prefix=app/" + ("&stale=1" if stale else "")
    items = cluster.ok(node, "GET", "/v1/kv" + query)["items"]
    return {item["key"]: item["value"] for item in items}


def test_save_wipe_everything_restore_and_rejoin_keeps_every_acknowledged_write(
    make_cluster, tmp_path: Path
) -> None:
    c = make_cluster()
    c.add_many(3, bootstrap_expect=3)
    old = c.wait_agreed()
    old_cid = next(iter(old.values()))["cluster_id"]
    written = {}
    for i in range(WRITES):  # through every member: a follower forwards to the leader
        key = f"app/k{i:03d}"
        assert c.put(f"n{i % 3 + 1}", key, {"i": i})["key"] == key
        written[key] = {"i": i}
    for key in RUNTIME_KEYS:
        c.put("n1", key, {"at": 1})

    assert c.api("n2", "GET", "/v1/snapshot", token=None)[0] == 401
    backup = tmp_path / "backups" / "fleet.snap"
    backup.parent.mkdir()
    saved = c.cli(
        "snapshot", "save", "--api", c.nodes["n2"].api_url,
        "--token-file", str(c.token_file), "--json", str(backup),
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    header = json.loads(saved.stdout)
    assert header["size"] == backup.stat().st_size
    assert header["index"] >= WRITES and header["cluster_id"] == old_cid
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in backup.parent.iterdir()] == ["fleet.snap"]  # no temp file left

    # Quorum lost (n2, n3 gone): no read point, so only --stale saves, from the survivor.
    c.kill9("n3")
    c.kill9("n2")
    cli = ["--api", c.nodes["n1"].api_url, "--token-file", str(c.token_file), "--json"]
    refused = c.cli("snapshot", "save", *cli, str(tmp_path / "no-quorum.snap"))
    assert refused.returncode == 1 and "503" in refused.stderr, refused.stderr
    assert not (tmp_path / "no-quorum.snap").exists()
    stale = c.cli("snapshot", "save", "--stale", *cli, str(tmp_path / "stale.snap"))
    assert stale.returncode == 0, stale.stderr
    assert json.loads(stale.stdout)["index"] >= header["index"] - 1  # n1's applied state

    for node in list(c.nodes.values()):  # the disaster: every member and its data gone
        if node.running():
            c.kill9(node)
        shutil.rmtree(node.data_dir)
    c.nodes.clear()

    restored = c.cli(
        "snapshot", "restore", str(backup), "--data-dir", str(c.dir / "n1"),
        "--node-id", "n1", "--cluster", c.name,
        "--raft-addr", f"{c.host(1)}:{RAFT_PORT}", "--api-addr", f"{c.host(1)}:7480",
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert f"{len(RUNTIME_KEYS)} runtime keys dropped" in restored.stdout

    c.add("n1")  # no --bootstrap-expect, no --join: the restored state wins
    alone = c.wait_agreed(["n1"])["n1"]
    assert alone["cluster_id"] not in (None, old_cid)
    assert [m["id"] for m in alone["members"]] == ["n1"]
    c.add("n2", join=[c.nodes["n1"].raft_addr])
    c.add("n3", join=[c.nodes["n1"].raft_addr])
    statuses = c.wait_agreed(["n1", "n2", "n3"])
    assert {st["cluster_id"] for st in statuses.values()} == {alone["cluster_id"]}
    voters = {m["id"] for m in statuses["n1"]["members"] if m["role"] in ("voter", "leader")}
    assert voters == {"n1", "n2", "n3"}
    for node in ("n1", "n2", "n3"):
        assert _keys(c, node) == written, node  # linearizable, through the member
        c.wait_for(lambda n=node: _keys(c, n, stale=True) == written, 20, f"{node}'s own copy")
    for key in RUNTIME_KEYS:
        assert c.get("n1", key)[0] == 404


# ---- the CLI's refusals, without agents ------------------------------------------------------


def _state(keys: int = 5) -> StateMachine:
    sm = StateMachine()
    index = 0
    for mid in ("a", "b"):
        index += 1
        ctx = member_context(f"10.0.0.{index}:7400", f"10.0.0.{index}:7480")
        sm.apply_conf(index, ConfChange(ConfChangeType.ADD_VOTER, mid, ctx))
    for k in [f"app/{i}" for i in range(keys)] + list(RUNTIME_KEYS):
        index += 1
        data = encode_command("kv_put", key=k, value={"k": k})
        sm.apply_entry(Entry(index=index, term=2, type=EntryType.NORMAL, data=data))
    return sm


def _backup(sm: StateMachine | None = None) -> Backup:
    sm = sm or _state()
    return Backup("prod", "prod-0123456789abcdef", "a", sm.index, 2, 1_700_000_000, sm.snapshot())


def _restore(file: Path, data_dir: Path, node: str = "r1"):
    return run_cli(
        "snapshot", "restore", str(file), "--data-dir", str(data_dir), "--node-id", node,
        "--cluster", "prod", "--raft-addr", "127.0.0.1:7400", "--api-addr", "127.0.0.1:7480",
    )  # fmt: skip


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.snap"
    path.write_bytes(encode_backup(_backup()))
    return path


def test_restore_writes_a_one_member_group_with_a_new_cluster_id(good_file, tmp_path) -> None:
    target = tmp_path / "empty"
    target.mkdir()  # an empty directory is fine
    done = _restore(good_file, target)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir()) == ["agent.json", "raft.log", "snapshot.bin"]
    cid = load_cluster_id(target, "r1", "prod")
    assert cid is not None and cid.startswith("prod-") and cid != "prod-0123456789abcdef"
    storage = DiskStorage.open(target)
    try:
        snap, hs = storage.snapshot, storage.hard_state
    finally:
        storage.close()
    source = _backup()
    assert snap.meta.index == source.index + 1 and snap.meta.conf_state.voters == ("r1",)
    assert hs.commit == snap.meta.index and hs.term >= snap.meta.term
    sm = StateMachine.from_snapshot(snap.data, snap.meta.index)
    assert [(m["id"], m["role"], m["raft_addr"]) for m in sm.members()] == [
        ("r1", "voter", "127.0.0.1:7400")
    ]
    assert sm.kv_keys("app/") == [f"app/{i}" for i in range(5)]
    assert all(sm.kv_get(k) is None for k in RUNTIME_KEYS)
    assert sm.kv_get("app/3") == _state().kv_get("app/3")  # value and indexes kept


MUTATIONS = (
    "truncated",
    "truncated in the header",
    "empty",
    "a bit flipped in the state",
    "a bit flipped in the index",
    "a bit flipped in the checksum",
    "trailing garbage",
    "not a snapshot",
)


def _mutations(raw: bytes) -> dict[str, bytes]:
    body = len(raw) - len(_backup().body)
    return {
        "truncated": raw[:-7],
        "truncated in the header": raw[:30],
        "empty": b"",
        "a bit flipped in the state": raw[:-3] + bytes([raw[-3] ^ 1]) + raw[-2:],
        "a bit flipped in the index": raw[:12] + bytes([raw[12] ^ 1]) + raw[13:],
        "a bit flipped in the checksum": raw[: body - 1] + bytes([raw[body - 1] ^ 1]) + raw[body:],
        "trailing garbage": raw + b"\n",
        "not a snapshot": b"SQLite format 3\x00" + raw[16:],
    }


@pytest.mark.parametrize("what", MUTATIONS)
def test_restore_refuses_a_damaged_file_and_writes_nothing(what, good_file, tmp_path) -> None:
    bad = tmp_path / "bad.snap"
    bad.write_bytes(_mutations(good_file.read_bytes())[what])
    target = tmp_path / "data"
    done = _restore(bad, target)
    assert done.returncode == 2, done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "refusing it (nothing was written)" in done.stderr
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _forged(**change: object) -> bytes:
    """A file with a valid checksum (SHA-256 is no signature: anyone can write one) whose
    contents no agent would save."""
    import dataclasses

    return encode_backup(dataclasses.replace(_backup(), **change))  # type: ignore[arg-type]


FORGED = {
    "a state nested too deep": lambda b: _forged(
        body=b'{"index": %d, "kv": ' % b.index + b"[" * 100_000 + b"]" * 100_000 + b"}"
    ),
    "a state index that is no integer": lambda b: _forged(
        index=1, body=b.body.replace(b'"index":%d' % b.index, b'"index":true')
    ),
    "a term at the end of 64 bits": lambda b: _forged(term=(1 << 64) - 1),
    "a cluster name with a terminal escape": lambda b: _forged(cluster="prod\x1b]0;pwned\x07"),
    "a node id with a line break": lambda b: _forged(node_id="a\nrestored fine"),
    "an index at the end of 64 bits": lambda b: _forged(
        index=(1 << 64) - 1,
        body=b.body.replace(b'"index":%d' % b.index, b'"index":%d' % ((1 << 64) - 1)),
    ),
}


@pytest.mark.parametrize("what", FORGED)
def test_restore_refuses_a_forged_file_in_one_line(what, tmp_path) -> None:
    """Checksummed but not what an agent saves: refused with one line and exit 2, nothing
    written (before: a traceback, or a data dir whose agent stops at its first election)."""
    backup = _backup()
    assert b'"index":%d' % backup.index in backup.body
    bad = tmp_path / "forged.snap"
    bad.write_bytes(FORGED[what](backup))
    target = tmp_path / "data"
    done = _restore(bad, target)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "nothing was written" in done.stderr
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["forged.snap"]


def test_restore_says_a_symlinked_data_dir_is_one(good_file, tmp_path) -> None:
    """A data dir that is a symlink (to another disk) is refused, not replaced by a
    directory: the message says so and names where it points."""
    real = tmp_path / "disk2"
    real.mkdir()
    link = tmp_path / "data"
    link.symlink_to(real)
    done = _restore(good_file, link)
    assert done.returncode == 2
    assert "is a symlink to" in done.stderr and str(real) in done.stderr, done.stderr
    assert "give the directory it points to" in done.stderr
    assert link.is_symlink() and list(real.iterdir()) == []


def test_a_file_that_is_no_regular_file_or_no_backup_is_refused_before_it_is_read(
    tmp_path,
) -> None:
    """A named pipe is refused, not waited on for ever; a large file that is no backup (a
    wrong path: a tarball, a disk image) is refused by its first bytes, not read whole into
    memory first."""
    import os

    fifo = tmp_path / "pipe.snap"
    os.mkfifo(fifo)
    for argv in (["inspect", str(fifo)], ["restore", str(fifo), "--data-dir", str(tmp_path / "d")]):
        if argv[0] == "restore":
            argv += ["--node-id", "r1", "--cluster", "prod"]
            argv += ["--raft-addr", "127.0.0.1:7400", "--api-addr", "127.0.0.1:7480"]
        done = run_cli("snapshot", *argv, timeout=20)
        assert done.returncode == 2 and "is not a regular file" in done.stderr, done.stderr
    big = tmp_path / "disk.img"
    with big.open("wb") as f:
        f.truncate(64 << 30)  # sparse: 64 GiB that take no disk, and no time unless read
    done = run_cli("snapshot", "inspect", str(big), timeout=20)
    assert done.returncode == 2 and "bad magic" in done.stderr, done.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)
def test_restore_into_an_empty_mount_point(good_file, tmp_path) -> None:
    """DIR, empty, may be a file system of its own (a data volume): it cannot be renamed
    over, so the files are written inside it. The mount lives in a mount namespace of the
    test's own, gone with it."""
    from agents import agent_command

    target = tmp_path / "volume"
    target.mkdir()
    restore = agent_command() + [
        "snapshot", "restore", str(good_file), "--data-dir", str(target), "--node-id", "r1",
        "--cluster", "prod", "--raft-addr", "127.0.0.1:7400", "--api-addr", "127.0.0.1:7480",
    ]  # fmt: skip
    script = f'mount -t tmpfs tmpfs "$1" && shift && "$@" && ls -A "{target}"'
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(target), *restore],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-3:] == ["agent.json", "raft.log", "snapshot.bin"], done.stdout


def test_an_ext4_volume_s_lost_and_found_does_not_count(good_file, tmp_path) -> None:
    """A fresh ext4 file system holds ``lost+found`` (fsck's, recreated by it): a data volume
    mounted as DIR is still empty for a restore; a file of that name is not."""
    target = tmp_path / "volume"
    (target / "lost+found").mkdir(parents=True)
    done = _restore(good_file, target)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in target.iterdir())
    assert names == ["agent.json", "lost+found", "raft.log", "snapshot.bin"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "lost+found").write_text("not fsck's")
    assert _restore(good_file, other).returncode == 2


def test_restore_into_an_existing_empty_dir_keeps_it(good_file, tmp_path) -> None:
    """The directory the operator made (its owner, its mode) is the one that holds the data."""
    target = tmp_path / "data"
    target.mkdir(mode=0o750)
    target.chmod(0o750)
    inode = target.stat().st_ino
    done = _restore(good_file, target)
    assert done.returncode == 0, done.stderr
    assert target.stat().st_ino == inode and target.stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in target.iterdir()) == ["agent.json", "raft.log", "snapshot.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "good.snap"]


def test_restore_warns_when_the_backup_is_of_another_cluster(good_file, tmp_path) -> None:
    """Allowed (a copy of prod for a test fleet), but never silent: a backup picked from the
    wrong directory would otherwise become this cluster's state unnoticed."""
    argv = ["--node-id", "r1", "--raft-addr", "127.0.0.1:7400", "--api-addr", "127.0.0.1:7480"]
    done = run_cli(
        "snapshot", "restore", str(good_file), "--data-dir", str(tmp_path / "d"),
        "--cluster", "staging", *argv,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "is a backup of cluster prod, not staging" in done.stderr, done.stderr
    assert _restore(good_file, tmp_path / "d2").stderr == ""  # the same cluster: no word


def test_restore_refuses_a_data_dir_that_is_not_empty(good_file, tmp_path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    (target / "raft.log").write_bytes(b"precious")
    done = _restore(good_file, target)
    assert done.returncode == 2
    assert "is not empty" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert [p.name for p in target.iterdir()] == ["raft.log"]
    assert (target / "raft.log").read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--node-id", "-bad", "--node-id"),
        ("--cluster", "a b", "--cluster"),
        ("--raft-addr", "nohost", "--raft-addr"),
    ],
)
def test_restore_refuses_bad_flags(flag, value, message, good_file, tmp_path) -> None:
    argv = {
        "--node-id": "r1",
        "--cluster": "prod",
        "--raft-addr": "127.0.0.1:7400",
        "--api-addr": "127.0.0.1:7480",
        "--data-dir": str(tmp_path / "data"),
    }
    argv[flag] = value
    done = run_cli("snapshot", "restore", str(good_file), *[x for kv in argv.items() for x in kv])
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "data").exists()


def test_inspect_prints_the_header_and_refuses_a_damaged_file(good_file, tmp_path) -> None:
    done = run_cli("snapshot", "inspect", str(good_file))
    assert done.returncode == 0, done.stderr
    header = json.loads(done.stdout)
    source = _backup()
    assert header["index"] == source.index and header["cluster"] == "prod"
    assert header["sha256"] == source.sha256 and header["format"] == FORMAT_VERSION
    bad = tmp_path / "cut.snap"
    bad.write_bytes(good_file.read_bytes()[:-1])
    done = run_cli("snapshot", "inspect", str(bad))
    assert done.returncode == 2 and "truncated" in done.stderr


def test_a_failed_save_leaves_the_file_as_it_was(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("t" * 40)
    token.chmod(0o600)
    old = tmp_path / "last.snap"
    old.write_bytes(b"the last good backup")
    done = run_cli(
        "snapshot", "save", "--api", "http://127.0.0.1:9", "--token-file", str(token), str(old)
    )
    assert done.returncode == 1 and "cannot reach the agent" in done.stderr
    assert old.read_bytes() == b"the last good backup"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.snap", "token"]


def test_save_refuses_a_device_a_pipe_or_a_link_before_asking_the_agent(tmp_path) -> None:
    # Replaced by a rename, /dev/full became a regular file (and the save said "saved").
    token = tmp_path / "token"
    token.write_text("t" * 40)
    token.chmod(0o600)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    target = tmp_path / "target.snap"
    target.write_bytes(b"kept")
    link = tmp_path / "link.snap"
    link.symlink_to(target)
    for path in ("/dev/null", "/dev/full", str(fifo), str(link)):
        before = os.lstat(path)
        # (an agent that does not exist: the refusal comes before any request)
        done = run_cli(
            "snapshot", "save", "--api", "http://127.0.0.1:9", "--token-file", str(token), path
        )
        assert done.returncode == 2, (path, done.stderr)
        assert "is not a regular file" in done.stderr, done.stderr
        after = os.lstat(path)
        assert (after.st_mode, after.st_ino, after.st_rdev) == (
            before.st_mode,
            before.st_ino,
            before.st_rdev,
        ), path
    assert target.read_bytes() == b"kept"
    done = run_cli(
        "snapshot",
        "save",
        "--api",
        "http://127.0.0.1:9",
        "--token-file",
        str(token),
        str(tmp_path / "nowhere" / "x.snap"),
    )
    assert done.returncode == 2 and "nowhere does not exist" in done.stderr, done.stderr


# ---- the format --------------------------------------------------------------------------


def test_the_format_round_trips_and_its_layout_is_as_documented() -> None:
    b = _backup()
    raw = encode_backup(b)
    assert decode_backup(raw) == b
    magic, version, index, term, created, length = struct.unpack_from("<8sIQQQQ", raw)
    assert (magic, version, index, term, created) == (MAGIC, 1, b.index, 2, 1_700_000_000)
    assert length == len(b.body) and raw.endswith(b.body)
    pos = 44
    for text in ("prod", "prod-0123456789abcdef", "a"):
        (n,) = struct.unpack_from("<H", raw, pos)
        assert raw[pos + 2 : pos + 2 + n].decode() == text
        pos += 2 + n
    assert raw[pos : pos + 32].hex() == b.sha256
    assert pos + 32 + length == len(raw)


def test_every_cut_and_every_flipped_byte_is_refused() -> None:
    raw = encode_backup(_backup(_state(keys=1)))
    for cut in range(len(raw)):
        with pytest.raises(BackupError):
            decode_backup(raw[:cut])
    for i in range(len(raw)):
        with pytest.raises(BackupError):
            decode_backup(raw[:i] + bytes([raw[i] ^ 0x40]) + raw[i + 1 :])


def test_another_format_version_is_refused_by_name() -> None:
    raw = bytearray(encode_backup(_backup()))
    raw[8:12] = struct.pack("<I", 2)
    with pytest.raises(BackupError, match="unsupported snapshot file format 2"):
        decode_backup(bytes(raw))


def test_the_format_module_does_no_io() -> None:
    """backupfile.py is a byte format like snapfile.py (docs/architecture.md, "The rules")."""
    from layering import IO_MODULES, absolute_tops

    import hafleet_agent.backupfile as module

    tops = {top for _, top in absolute_tops(Path(module.__file__).read_text())}
    assert not tops & (IO_MODULES | {"http", "urllib", "aiohttp"}), tops
