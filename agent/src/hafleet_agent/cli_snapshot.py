"""``hafleet-agent snapshot save|restore|inspect``: backups and disaster recovery (see
docs/operations.md for the runbook, :mod:`hafleet_agent.backupfile` for the file format).

- ``save [--api URL --token-file F --ca-file F] [--stale] FILE``: ``GET /v1/snapshot`` of
  one agent, checked (magic, version, length, SHA-256), then written atomically: a temporary
  file beside FILE, fsync'd, renamed over FILE, the directory fsync'd. A failed save leaves
  FILE as it was. ``--stale``: the agent's applied state without a read point (quorum lost).
- ``restore FILE --data-dir DIR --node-id ID --cluster NAME --raft-addr H:P --api-addr H:P``:
  a new data dir holding a one-member group with the snapshot's state and a new cluster id
  (:mod:`hafleet_agent.node.restore`).
- ``inspect FILE``: check a file and print its header as JSON.

Exit codes: 0 done; 1 the agent or the disk failed; 2 bad usage, a corrupt or truncated
file, a data dir that is not empty. Light to import: the node's modules load when a
restore runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from hafleet_agent.cli_types import PROG

#: The longest a save waits for the agent's answer (a large state takes a while to encode).
SAVE_TIMEOUT_S = 300.0


class SnapshotCliError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_snapshot(
    commands: argparse._SubParsersAction,
    client_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The ``snapshot`` subcommand; ``client_options`` adds ``--api``, ``--token-file`` and
    ``--ca-file`` as the other client subcommands have them (cli.py)."""
    help_text = "save the replicated state to a file, or restore a new group from one"
    snap = commands.add_parser("snapshot", help=help_text, description=help_text)
    snap.set_defaults(command_name="snapshot")
    ops = snap.add_subparsers(dest="snapshot_command", metavar="OP", required=True)

    text = "save a consistent snapshot of the group's state to FILE (atomically, checked)"
    save = ops.add_parser("save", help=text, description=text)
    save.set_defaults(handler=_handle, command_name="snapshot save")
    client_options(save)
    save.add_argument("--json", action="store_true", help="print the file's header as JSON")
    save.add_argument(
        "--stale",
        action="store_true",
        help="the agent's own applied state, no leader needed (a group that lost its quorum: "
        "save from the member with the highest applied index)",
    )
    save.add_argument("file", metavar="FILE", help="where the snapshot goes")

    text = (
        "write a new data dir holding a one-member group (a new cluster id) with the "
        "snapshot's state; `run` on it serves as leader, fresh agents --join it"
    )
    rest = ops.add_parser("restore", help=text, description=text)
    rest.set_defaults(handler=_handle, command_name="snapshot restore")
    rest.add_argument("file", metavar="FILE", help="a file of `snapshot save`")
    rest.add_argument(
        "--data-dir", required=True, metavar="DIR", help="the new data dir (missing or empty)"
    )
    rest.add_argument("--node-id", required=True, metavar="ID", help="the new group's member")
    rest.add_argument("--cluster", required=True, metavar="NAME", help="the cluster name")
    rest.add_argument(
        "--raft-addr", required=True, metavar="HOST:PORT", help="the member's Raft address"
    )
    rest.add_argument(
        "--api-addr", required=True, metavar="HOST:PORT", help="the member's API address"
    )

    text = "check a snapshot file and print its header as JSON"
    inspect = ops.add_parser("inspect", help=text, description=text)
    inspect.set_defaults(handler=_handle, command_name="snapshot inspect")
    inspect.add_argument("file", metavar="FILE", help="a file of `snapshot save`")


def _handle(args: argparse.Namespace) -> int:
    try:
        if args.snapshot_command == "save":
            return _save(args)
        if args.snapshot_command == "restore":
            return _restore(args)
        return _inspect(args)
    except SnapshotCliError as exc:
        print(f"{PROG} {args.command_name}: {exc}", file=sys.stderr)
        return exc.exit_code


# --- save -----------------------------------------------------------------------------------


def endpoint(args: argparse.Namespace) -> tuple[str, bytes, str | None]:
    """The agent's base URL, the token and the CA file, found as the other client subcommands
    find them (the flags, the environment, the local agent's config: client_config.py)."""
    from .client_config import DiscoveryError, discover_for

    try:
        end = discover_for(args)
    except (DiscoveryError, ValueError) as exc:
        raise SnapshotCliError(str(exc), 2) from None
    token = end.token.encode() if isinstance(end.token, str) else end.token
    return end.api, token, end.ca_file


def fetch(base_url: str, token: bytes, ca_file: str | None, out: BinaryIO, stale: bool) -> int:
    """Write the body of ``GET /v1/snapshot`` to ``out`` as it comes, a MiB at a time (a
    large state is never whole in memory); the bytes written. SnapshotCliError, exit 1, when
    there is none. A redirect is refused, not followed: urllib's default handler sent the
    token on to whatever host a 3xx named (the other clients refuse them too)."""
    from .apiclient import _NoRedirect, tls_context

    url = base_url.rstrip("/") + "/v1/snapshot" + ("?stale=1" if stale else "")
    headers = {"Authorization": f"Bearer {token.decode()}", "Accept": "application/octet-stream"}
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect(), urllib.request.ProxyHandler({})]
    if url.startswith("https://") or ca_file:
        handlers.append(urllib.request.HTTPSHandler(context=tls_context(True, ca_file)))
    opener = urllib.request.build_opener(*handlers)
    written = 0
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=SAVE_TIMEOUT_S) as r:
            while chunk := r.read(1 << 20):
                out.write(chunk)
                written += len(chunk)
        return written
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "?")
            raise SnapshotCliError(
                f"GET {url}: {exc.code} {exc.reason}, a redirect to {where[:200]}: not followed "
                "(the agent's API never redirects; is --api an agent's address?)",
                1,
            ) from None
        try:
            why = json.loads(exc.read(65536).decode("utf-8")).get("error", "")
        except (ValueError, AttributeError, OSError):
            why = ""
        raise SnapshotCliError(f"GET {url}: {exc.code} {why or exc.reason}", 1) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SnapshotCliError(f"cannot reach the agent at {base_url}: {reason}", 1) from None


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _save(args: argparse.Namespace) -> int:
    from .backupfile import BackupError, check_stream

    path = Path(args.file)
    parent = path.absolute().parent
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        raise SnapshotCliError(f"{parent} {why}", 2)
    if path.is_dir():
        raise SnapshotCliError(f"{path} is a directory; give a file name", 2)
    # The file is replaced by a rename: a device (/dev/null, /dev/full), a pipe or a symbolic
    # link there became a regular file, and the save said it succeeded.
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise SnapshotCliError(
            f"{path} is not a regular file (a device, a pipe or a symbolic link): a snapshot is "
            "written to a new file or over a regular one; refusing it",
            2,
        )
    api, token, ca_file = endpoint(args)
    # The answer goes to a temporary file beside FILE as it comes, is checked there (header,
    # length, checksum), fsync'd and renamed over FILE: FILE holds the old backup or the
    # new one, whole, never a part; memory stays bounded however large the state.
    tmp = parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "xb+") as f:
            os.fchmod(f.fileno(), 0o600)
            try:
                size = fetch(api, token, ca_file, f, stale=args.stale)
            except OSError as exc:  # the disk (ENOSPC...), while writing
                raise SnapshotCliError(f"cannot write {path}: {exc}", 1) from None
            f.flush()
            f.seek(0)
            try:
                header, sha256 = check_stream(f.read)
            except BackupError as exc:
                raise SnapshotCliError(
                    f"the agent's answer is not a whole snapshot: {exc}", 1
                ) from None
            try:
                os.fsync(f.fileno())
            except OSError as exc:
                raise SnapshotCliError(f"cannot write {path}: {exc}", 1) from None
        try:
            os.replace(tmp, path)
            _fsync_dir(parent)
        except OSError as exc:
            raise SnapshotCliError(f"cannot write {path}: {exc}", 1) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if args.json:
        summary = header.summary(sha256)
        print(json.dumps({"file": str(path), **summary, "size": size}, sort_keys=True))
    else:
        print(
            f"saved {path}: index {header.index}, term {header.term}, {size} bytes, "
            f"sha256 {sha256} (cluster {header.cluster}, from {header.node_id})"
        )
    return 0


# --- restore and inspect --------------------------------------------------------------------


def read_backup(file: str):  # -> backupfile.Backup
    """The checked backup in ``file`` (SnapshotCliError, exit 2, when it is not one)."""
    import stat

    from .backupfile import MAGIC, BackupError, decode_backup

    try:
        # a regular file only (a named pipe would be waited on for ever, a device read
        # whole), and its first bytes must be a backup's before the rest is read into memory
        if not stat.S_ISREG(os.stat(file).st_mode):
            raise SnapshotCliError(f"{file} is not a regular file; refusing it", 2)
        with open(file, "rb") as f:
            raw = f.read(len(MAGIC))
            if raw == MAGIC:
                raw += f.read()
    except OSError as exc:
        raise SnapshotCliError(f"cannot read {file}: {exc.strerror or exc}", 2) from None
    try:
        return decode_backup(raw)
    except BackupError as exc:
        raise SnapshotCliError(f"{file}: {exc}; refusing it (nothing was written)", 2) from None


def _check_args(args: argparse.Namespace) -> None:
    from .commands import StateError, validate_addr
    from .config import _valid_name
    from .ids import member_id_error

    error = member_id_error(args.node_id, "--node-id")
    if error is not None:
        raise SnapshotCliError(error, 2)
    if not _valid_name(args.cluster):
        raise SnapshotCliError(f"--cluster {args.cluster!r} must be 1-63 of [A-Za-z0-9._-]", 2)
    for flag, value in (("--raft-addr", args.raft_addr), ("--api-addr", args.api_addr)):
        try:
            validate_addr(value, flag)
        except StateError as exc:
            raise SnapshotCliError(exc.message, 2) from None


def _restore(args: argparse.Namespace) -> int:
    from .node.restore import RestoreError, check_target, restore
    from .wal import StorageError

    _check_args(args)
    data_dir = Path(args.data_dir)
    try:
        check_target(data_dir)
    except RestoreError as exc:
        raise SnapshotCliError(f"{exc}; nothing was written", 2) from None
    backup = read_backup(args.file)
    if backup.cluster != args.cluster:  # allowed (a copy for another fleet), never silent
        print(
            f"{PROG} snapshot restore: warning: {args.file} is a backup of cluster "
            f"{backup.cluster}, not {args.cluster}; restoring it as {args.cluster}",
            file=sys.stderr,
        )
    try:
        done = restore(
            backup,
            data_dir,
            node_id=args.node_id,
            cluster=args.cluster,
            raft_addr=args.raft_addr,
            api_addr=args.api_addr,
        )
    except RestoreError as exc:
        raise SnapshotCliError(f"{exc}; nothing was written", 2) from None
    except (OSError, StorageError) as exc:
        raise SnapshotCliError(f"cannot write {data_dir}: {exc}; nothing was left", 1) from None
    print(
        f"restored {args.file} (index {backup.index} of cluster {backup.cluster}) into "
        f"{done.data_dir}: {args.node_id} alone, a voter, of cluster {args.cluster} with the "
        f"new id {done.cluster_id}; {done.keys} keys ({done.dropped} runtime keys dropped"
        + (
            f"; the maintenance marks of {', '.join(done.maintenance)} dropped: they start in "
            "service when they join again"
            if done.maintenance
            else ""
        )
        + "). "
        f"Start it with `{PROG} run --node-id {args.node_id} --cluster {args.cluster} "
        f"--data-dir {done.data_dir} ...` (no --bootstrap-expect), then start fresh agents "
        f"with --join {args.raft_addr}"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    backup = read_backup(args.file)
    print(json.dumps({"file": args.file, **backup.summary()}, sort_keys=True))
    return 0
