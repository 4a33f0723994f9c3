"""mDNS is a hint (issue 13): a record forged by someone without the cluster key does not
keep fresh ``--bootstrap-expect`` nodes from founding.

The forger is ``tests/agent/discovery/mdns_node.py raw``: plain python-zeroconf, bound to one
address of the test's leased loopback /24 (nothing leaves 127.0.0.0/8), announcing what it is
told. It starts, and its records are registered, before the agents start. Then three fresh
agents with ``bootstrap_expect = 3`` over mDNS must found one cluster of exactly them.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import RAFT_PORT, Cluster

MDNS_NODE = Path(__file__).resolve().parents[1] / "discovery" / "mdns_node.py"
AGENT_SRC = Path(__file__).resolve().parents[3] / "agent" / "src"
READY_TIMEOUT = 20.0

MakeCluster = Callable[..., Cluster]


def txt_hex(fields: dict[str, str]) -> str:
    items = [f"{k}={v}".encode() for k, v in fields.items()]
    return b"".join(bytes([len(item)]) + item for item in items).hex()


@contextlib.contextmanager
def forger(cluster: Cluster, records: dict[str, dict[str, str]], log: Path) -> Iterator[None]:
    """Announce ``records`` (instance -> TXT fields) from 127.0.X.15 until the block ends;
    the process is stopped by its PID whatever happens."""
    spec = [{"instance": name, "txt_hex": txt_hex(txt)} for name, txt in records.items()]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(AGENT_SRC), env.get("PYTHONPATH")]))
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(MDNS_NODE), "raw", "--interface", cluster.host(15)]
            + ["--spec", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while b'"event": "ready"' not in buffer:
                left = deadline - time.monotonic()
                assert left > 0, f"the forger did not register its records: {log.read_text()}"
                assert proc.poll() is None, f"the forger exited: {log.read_text()}"
                if selector.select(min(left, 0.2)):
                    buffer += os.read(proc.stdout.fileno(), 1 << 16)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("claim", ["running-cluster", "lowest-id"])
def test_a_forged_mdns_record_does_not_stop_fresh_nodes_from_founding(
    make_cluster: MakeCluster, tmp_path: Path, claim: str
) -> None:
    """``running-cluster``: a record with a cluster id (fresh=0), which used to make every
    fresh node ask it to join, for ever. ``lowest-id``: a fresh node ``a0``, below n1, which
    used to make n1 wait for a0's founding, for ever. Each forged record points at a real
    agent's Raft address too (n1's): the handshake there tells n1's own id, not the claim."""
    cluster = make_cluster()
    fake = {
        "running-cluster": {"id": "n0", "cid": f"{cluster.name}-forged", "fresh": "0"},
        "lowest-id": {"id": "a0", "cid": "", "fresh": "1"},
    }[claim]
    records = {}
    for i, addr in enumerate([cluster.host(15), cluster.host(1)]):
        records[f"forged{i}"] = {
            "cluster": cluster.name,
            "cid": fake["cid"],
            "id": f"{fake['id']}{'' if i == 0 else '-x'}",
            "raft": f"{addr}:{RAFT_PORT}",
            "api": f"{addr}:7480",
            "fresh": fake["fresh"],
            "v": "1",
        }
    with forger(cluster, records, tmp_path / "forger.log"):
        cluster.add_many(3, bootstrap_expect=3, mdns=True)
        statuses = cluster.wait_agreed()
    assert sorted(statuses) == ["n1", "n2", "n3"]
    for nid, st in statuses.items():
        assert sorted(m["id"] for m in st["members"]) == ["n1", "n2", "n3"], (nid, st)
    cids = {st["cluster_id"] for st in statuses.values()}
    assert len(cids) == 1 and None not in cids and fake["cid"] not in cids, cids
