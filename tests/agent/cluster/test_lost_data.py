"""A member whose data was lost or rolled back stops with what to do (a hostile review).

A member restarted on an older copy of its data dir (a VM snapshot restored, a backup of the
directory) no longer has entries it acknowledged as durable. The leader's heartbeats count on
them (their commit index is ``min(match, committed)``): the core asserted on each heartbeat,
the transport logged a traceback every ~100 ms, forever, while ``/v1/health`` said ok and
the leader showed the member healthy, the group running on fewer replicas than it showed.
Now it stops (exit 1) and says how to bring it back, as etcd stops ("was the raft log
corrupted, truncated, or lost?").
"""

from __future__ import annotations

import shutil
from pathlib import Path

from harness import founded_cluster, wait_for


def _applied(c, node: str, key: str) -> bool:
    return c.get(node, key, stale=True)[0] == 200


def test_a_member_started_on_an_older_copy_of_its_data_stops_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    with founded_cluster(tmp_path / "c") as c:
        lead = c.leader()
        follower = c.node(c.followers()[0])
        c.put(lead, "before", 1)
        wait_for(lambda: _applied(c, follower.id, "before"), 20, "the follower has 'before'")
        c.term(follower)
        c.wait_exit(follower)
        older = tmp_path / "older"
        shutil.copytree(follower.data_dir, older)
        c.start(follower)
        for i in range(40):  # entries it acknowledges, then forgets
            c.put(lead, f"after/{i}", i)
        wait_for(lambda: _applied(c, follower.id, "after/39"), 30, "the follower has 'after/39'")
        c.term(follower)
        c.wait_exit(follower)
        shutil.rmtree(follower.data_dir)
        shutil.copytree(older, follower.data_dir)

        c.start(follower)
        code = c.wait_exit(follower, timeout=30)

        last_start = follower.log().rsplit("===== harness: start #3", 1)[1]
        assert code == 1, last_start[-3000:]
        assert "this member's data was lost or rolled back" in last_start, last_start[-3000:]
        assert f"hafleet-agent remove-member {follower.id}" in last_start
        assert "Traceback" not in last_start, last_start[-3000:]
        # The others go on.
        c.put(lead, "later", 2)
        assert c.get(lead, "later")[0] == 200
