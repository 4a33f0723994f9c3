"""A new data directory from a backup: a one-member group holding the backup's state
(``hafleet-agent snapshot restore``; docs/operations.md has the runbook).

What is written, in a temporary directory beside the target and renamed into place when
whole (or, when the target exists, empty, inside it and then moved up file by file: it may be
a file system of its own, and keeps its owner and mode):

- ``snapshot.bin`` at index I+1 (I: the backup's index) whose configuration is this node
  alone, a voter; its state is the backup's, with the old members forgotten and this node
  added by the same configuration change a join applies (its addresses in the context), and
  the KV keys that describe the old fleet's live processes dropped (balancer registrations
  and drained marks, service and reachability marks: :data:`RUNTIME_PREFIXES`; the
  playbooks' lock), and the old
  members' maintenance marks with them (removing a member deletes its mark, so that an id
  added again starts in service: a restored fleet whose members rejoin is no different); the
  operator's keys (their values, create and modify indexes) stay as they were;
- ``raft.log`` with the hard state (the backup's term, commit I+1) and no entries;
- ``agent.json`` with the node id, the cluster name and a NEW cluster id: no member of the
  old group takes a message of this one, nor the other way round.

``hafleet-agent run`` on it (no ``--bootstrap-expect`` needed: persisted state wins) elects
itself at once, being the only voter, and fresh agents ``--join`` it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..backupfile import Backup
from ..keys import (
    DRAINED_PREFIX,
    MAINTENANCE_PREFIX,
    PLAYBOOK_LOCK_KEY,
    REGISTERED_KEY,
    REGISTERED_PREFIX,
    SERVICE_HEALTH_PREFIX,
    UNREACHABLE_PREFIX,
)
from ..raft.types import ConfChange, ConfChangeType, ConfState, HardState, Snapshot, SnapshotMeta
from ..state import StateMachine, encode_json, member_context
from ..wal import DiskStorage
from .meta import META_FILE, save_cluster_id

#: KV keys the agents and the balancers write about the processes of the running fleet; a
#: restored group starts without them (a stale drained mark could let a removal go on early).
RUNTIME_PREFIXES = (DRAINED_PREFIX, REGISTERED_PREFIX, SERVICE_HEALTH_PREFIX, UNREACHABLE_PREFIX)


class RestoreError(Exception):
    """The restore cannot be done (the message says why, in one line)."""


@dataclass(frozen=True, slots=True)
class Restored:
    data_dir: Path
    cluster_id: str
    index: int
    keys: int
    dropped: int
    #: the members whose maintenance marks were dropped (sorted)
    maintenance: tuple[str, ...] = ()


#: The highest term and index a restore takes: the new group must be able to go on (its
#: first election is term + 1, its first entry index + 2, and both are u64 on disk). An
#: agent's own backups are nowhere near; a file past it is forged or from a broken agent.
MAX_RESTORED = 1 << 63


def _runtime_key(key: str) -> bool:
    # (a playbook run's lock in the backup was the old fleet's run: over, whoever held it)
    return key in (REGISTERED_KEY, PLAYBOOK_LOCK_KEY) or key.startswith(RUNTIME_PREFIXES)


def restored_state(
    backup: Backup, node_id: str, raft_addr: str, api_addr: str
) -> tuple[bytes, int, int, tuple[str, ...]]:
    """The state of the new group (its bytes), the index it is at, how many runtime keys
    were dropped and the members whose maintenance marks were. ValueError when the backup's
    state does not load."""
    for what, value in (("term", backup.term), ("index", backup.index)):
        if value >= MAX_RESTORED:
            raise ValueError(f"its {what} {value} leaves the new group no room to grow")
    obj = json.loads(backup.body.decode("utf-8"))
    kv = obj.get("kv")
    if not isinstance(kv, dict):
        raise ValueError("the state has no KV store")
    cut = len(MAINTENANCE_PREFIX)
    marks = tuple(sorted(k[cut:] for k in kv if k.startswith(MAINTENANCE_PREFIX)))
    obj["kv"] = {
        k: rec
        for k, rec in kv.items()
        if not _runtime_key(k) and not k.startswith(MAINTENANCE_PREFIX)
    }
    obj["members"] = {}  # their weights go with them (StateMachine.restore)
    sm = StateMachine.from_snapshot(encode_json(obj), backup.index)
    index = backup.index + 1
    change = ConfChange(ConfChangeType.ADD_VOTER, node_id, member_context(raft_addr, api_addr))
    result = sm.apply_conf(index, change)
    if not result.ok:
        raise ValueError(f"cannot add {node_id}: {result.error}")
    return sm.snapshot(), index, len(kv) - len(obj["kv"]) - len(marks), marks


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entries(data_dir: Path) -> list[str]:
    """What ``data_dir`` holds, but for an ext4 volume's ``lost+found`` (fsck's directory,
    there on every fresh file system of that kind)."""
    return [
        p.name
        for p in data_dir.iterdir()
        if not (p.name == "lost+found" and p.is_dir() and not p.is_symlink())
    ]


def check_target(data_dir: Path) -> None:
    """RestoreError unless ``data_dir`` is missing or an empty directory (``lost+found``
    aside: a data volume mounted there)."""
    if data_dir.is_symlink():  # it would be replaced by a directory: off the disk it names
        raise RestoreError(
            f"{data_dir} is a symlink to {os.readlink(data_dir)}: give the directory it "
            "points to as --data-dir"
        )
    if data_dir.exists() and not data_dir.is_dir():
        raise RestoreError(f"{data_dir} exists and is not a directory")
    if data_dir.exists() and _entries(data_dir):
        raise RestoreError(
            f"{data_dir} is not empty: restore writes a new data dir; move the old one "
            "away first (or give another --data-dir)"
        )


def restore(
    backup: Backup,
    data_dir: Path,
    *,
    node_id: str,
    cluster: str,
    raft_addr: str,
    api_addr: str,
) -> Restored:
    """Write ``data_dir`` (see the module docstring). RestoreError when the target is not
    empty or the backup's state does not load; OSError when writing failed (nothing is left
    behind then)."""
    check_target(data_dir)
    try:
        state, index, dropped, marks = restored_state(backup, node_id, raft_addr, api_addr)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RestoreError(f"the snapshot's state does not load: {exc}") from None
    parent = data_dir.absolute().parent
    # An existing (empty) DIR is the one the operator made, with its owner and mode, maybe a
    # file system of its own (a data volume: it cannot be renamed over): the files are
    # written in a directory inside it and moved up. A missing one is written beside it.
    existing = data_dir.is_dir()
    name = f"restoring-{os.getpid()}-{secrets.token_hex(3)}"
    if existing:
        tmp = data_dir / f".{name}"
    else:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{data_dir.name}.{name}"
    cluster_id = f"{cluster}-{secrets.token_hex(8)}"
    moved: list[Path] = []
    try:
        storage = DiskStorage.open(tmp)
        try:
            conf = ConfState(voters=(node_id,))
            term = max(backup.term, 1)
            storage.save_snapshot(Snapshot(SnapshotMeta(index, term, conf), state))
            storage.save(HardState(term=term, vote=None, commit=index), [])
        finally:
            storage.close()
        (tmp / "LOCK").unlink(missing_ok=True)
        save_cluster_id(tmp, node_id, cluster, cluster_id)
        if existing:
            if _entries(data_dir) != [tmp.name]:
                raise RestoreError(f"{data_dir} is not empty any more: something wrote to it")
            # agent.json last: the node's identity goes in once its log is there
            for path in sorted(tmp.iterdir(), key=lambda p: (p.name == META_FILE, p.name)):
                os.rename(path, data_dir / path.name)
                moved.append(data_dir / path.name)
            tmp.rmdir()
            _fsync_dir(data_dir)
        else:
            check_target(data_dir)  # nothing appeared meanwhile
            os.replace(tmp, data_dir)  # onto a missing directory
            _fsync_dir(parent)
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kv = json.loads(state.decode("utf-8"))["kv"]
    return Restored(data_dir, cluster_id, index, len(kv), dropped, marks)
