"""The node's own file next to its Raft state, ``agent.json``: which node of which cluster
the data dir belongs to, and the cluster id once the node adopted one (founding, joining,
or the first Raft message of its cluster). Written once, atomically, fsync'd."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..wal import StorageError

META_FILE = "agent.json"


def load_cluster_id(data_dir: Path, node_id: str, cluster: str) -> str | None:
    """The cluster id recorded in ``data_dir`` (None: none yet, or no file). A file of
    another node or cluster is a StorageError: the node must not start on it."""
    path = data_dir / META_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {path}: {exc}") from None
    if meta.get("node_id") != node_id or meta.get("cluster") != cluster:
        raise StorageError(
            f"{data_dir} belongs to node {meta.get('node_id')!r} of cluster "
            f"{meta.get('cluster')!r}, not node {node_id!r} of {cluster!r}; "
            "use another --data-dir or the matching --node-id/--cluster"
        )
    cluster_id: str | None = meta.get("cluster_id")
    return cluster_id


def save_cluster_id(data_dir: Path, node_id: str, cluster: str, cluster_id: str | None) -> None:
    """Record the cluster id (OSError when that failed)."""
    path = data_dir / META_FILE
    tmp = path.with_suffix(".tmp")
    data = {"node_id": node_id, "cluster": cluster, "cluster_id": cluster_id}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(data).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
