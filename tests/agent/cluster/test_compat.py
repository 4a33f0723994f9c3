"""Wire and disk compatibility with an earlier commit (issue 14: a redesign that keeps the
wire format, the disk format and the replicated commands).

Agents of the earlier commit (``HAFLEET_COMPAT_REF``, by default the last commit before the
redesign began) and of this checkout found one group together, replicate both ways, hand
leadership to each other, install each other's snapshots, and each restarts as the other
version on the data directory the first one wrote. ``git archive`` takes the earlier agent
out of this checkout's own history; a tree without that history skips the test and says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import FORM_TIMEOUT, Cluster, Node, agent_command

from hafleet_agent.raft.core import Config

REPO = Path(__file__).resolve().parents[3]
#: The parent of the redesign's first commit ("apiclient: the one client of the HTTP API").
DEFAULT_REF = "8d67294^"
REF = os.environ.get("HAFLEET_COMPAT_REF", DEFAULT_REF)

MakeCluster = Callable[..., Cluster]
SNAPSHOT_ENTRIES = 20  # the members' snapshot_entries: the leader compacts often
WRITES = 150  # written while a member is down: more than the leader sends it unanswered


def earlier_agent(ref: str, into: Path) -> Path:
    """agent/src of ``ref``, unpacked under ``into``; skips when the history lacks it."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", ref, "agent/src"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"no git history with {ref!r} here: {detail.decode(errors='replace').strip()}")
    tar_path = into / "earlier.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into / "agent" / "src"


def run_as(node: Node, src: Path | None) -> None:
    """Make ``node`` run this checkout's agent (``src`` None) or the one in ``src``. The
    earlier one refuses to start unless the package it imports is the one under ``src``."""
    flags = node.argv[node.argv.index("run") :]
    if src is None:
        node.argv = agent_command() + flags
        return
    boot = (
        "import sys, hafleet_agent;"
        f"assert hafleet_agent.__file__.startswith({str(src)!r}), hafleet_agent.__file__;"
        "from hafleet_agent.cli import main; sys.exit(main())"
    )
    node.argv = ["env", f"PYTHONPATH={src}", sys.executable, "-c", boot] + flags


def stale_value(cluster: Cluster, nid: str, key: str, want: object) -> None:
    """Wait until ``nid``'s own copy of the state (a stale read) holds ``want`` at ``key``."""

    def holds() -> bool:
        code, got = cluster.get(nid, key, stale=True)
        return code == 200 and isinstance(got, dict) and got.get("value") == want

    cluster.wait_for(holds, FORM_TIMEOUT, f"{key} = {want!r} on {nid}")


def transfer_to(cluster: Cluster, target: str) -> None:
    lead = cluster.leader()
    if lead != target:
        cluster.ok(lead, "POST", "/v1/leadership/transfer", {"to": target})
    cluster.wait_for(lambda: cluster.leader() == target, FORM_TIMEOUT, f"{target} to lead")


def catches_up_by_snapshot(cluster: Cluster, lead: str, behind: str, tag: str) -> None:
    """``lead`` leads and compacts past what ``behind`` has while ``behind`` is down; back, it
    must install ``lead``'s snapshot (the snapshot's bytes on the wire and on disk)."""
    transfer_to(cluster, lead)
    installs = cluster.node(behind).log().count("installed a snapshot at index")
    cluster.kill9(behind)
    # One write at a time: each one is an append of its own to ``behind``. The leader does
    # not know ``behind`` is down, and its transport keeps the frames for it until it is
    # back, so whatever was sent reaches it then; but no more than max_inflight appends go
    # out unanswered, and the leader compacts every SNAPSHOT_ENTRIES entries: the writes
    # after those it never sent are in no log, only in its snapshot. (Written 4 at a time
    # they travelled in fewer appends, all of them sent, and ``behind`` could catch up from
    # its queue without a snapshot.)
    assert WRITES > Config.max_inflight + 2 * SNAPSHOT_ENTRIES
    for i in range(WRITES):
        cluster.put(lead, f"compat/{tag}/{i}", i)
    cluster.restart(behind)
    cluster.wait_for(
        lambda: cluster.node(behind).log().count("installed a snapshot at index") > installs,
        FORM_TIMEOUT,
        f"{behind} to install {lead}'s snapshot",
    )
    cluster.wait_agreed()
    stale_value(cluster, behind, f"compat/{tag}/{WRITES - 1}", WRITES - 1)


def writes_read_back_everywhere(cluster: Cluster, tag: str, count: int = 10) -> None:
    nodes = list(cluster.nodes)
    for i in range(count):
        cluster.put(nodes[i % len(nodes)], f"compat/{tag}/{i}", {"i": i, "tag": tag})
    for nid in nodes:
        for i in range(count):
            code, got = cluster.get(nid, f"compat/{tag}/{i}")
            assert code == 200 and got["value"] == {"i": i, "tag": tag}, (nid, i, got)


def test_an_earlier_agent_and_this_one_form_a_group_both_ways(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    src = earlier_agent(REF, tmp_path)
    cluster = make_cluster(config={"snapshot_entries": SNAPSHOT_ENTRIES})
    n1, n2, n3 = cluster.add_many(3, bootstrap_expect=3, start=False)
    run_as(n1, src)
    run_as(n2, src)  # n3 runs this checkout
    for node in (n1, n2, n3):
        cluster.start(node)
    cluster.wait_agreed()

    # replication both ways: each one leads in turn, with the others following
    for lead in ("n1", "n3"):
        transfer_to(cluster, lead)
        writes_read_back_everywhere(cluster, f"led-by-{lead}")

    # snapshots over the wire: an earlier leader compacts while this checkout's n3 is down,
    # then n3 catches up by installing the earlier one's snapshot (and the reverse below)
    catches_up_by_snapshot(cluster, lead="n1", behind="n3", tag="snap")

    # disk: each version restarts on a data directory the other one wrote
    for nid, as_src in (("n2", None), ("n3", src)):
        node = cluster.node(nid)
        cluster.term(nid)
        assert cluster.wait_exit(nid) == 0, cluster.logs_tail()
        run_as(node, as_src)
        cluster.start(nid)
        cluster.wait_agreed()
        stale_value(cluster, nid, f"compat/snap/{WRITES - 1}", WRITES - 1)
    # now n1 and n3 run the earlier agent, n2 this checkout: it leads, and an earlier
    # follower installs its snapshot
    catches_up_by_snapshot(cluster, lead="n2", behind="n1", tag="snap2")
    writes_read_back_everywhere(cluster, "mixed-end")
