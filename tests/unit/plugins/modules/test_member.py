# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.member against a stand-in cluster: add, remove, check mode, diff, idempotence."""

from __future__ import annotations

import pytest

from ansible_collections.hafleet.cluster.plugins.modules import member
from ansible_collections.hafleet.cluster.tests.unit.plugins.fake_cluster import TOKEN, FakeCluster
from ansible_collections.hafleet.cluster.tests.unit.plugins.modules.utils import run_module


@pytest.fixture(name="cluster")
def cluster_fixture():
    with FakeCluster() as cluster:
        yield cluster


def args(cluster, node="n2", **extra):
    base = {"api_url": cluster.url(node), "api_token": TOKEN, "wait_timeout": 5}
    base.update(extra)
    return base


def writes(cluster):
    return [r for r in cluster.requests if r["method"] != "GET"]


NEW = {"id": "n4", "raft_addr": "10.0.0.14:7400", "api_addr": "10.0.0.14:7480"}


def test_present_adds_a_member_and_waits_until_it_votes(cluster):
    result = run_module(member.main, args(cluster, **NEW), diff=True)

    assert result["changed"] is True
    assert result["member"]["role"] == "voter"
    assert result["diff"] == {
        "before": {},
        "after": {
            "id": "n4",
            "raft_addr": "10.0.0.14:7400",
            "api_addr": "10.0.0.14:7480",
            "service_addr": None,
            "maintenance": False,
        },
    }
    post = writes(cluster)
    # Asked through n2, sent to the leader n1.
    assert [(r["method"], r["path"], r["node"]) for r in post] == [("POST", "/v1/members", "n1")]
    assert post[0]["body"] == {
        "id": "n4",
        "raft_addr": "10.0.0.14:7400",
        "api_addr": "10.0.0.14:7480",
    }


def test_present_again_changes_nothing(cluster):
    run_module(member.main, args(cluster, **NEW))
    before = len(writes(cluster))

    result = run_module(member.main, args(cluster, **NEW), diff=True)

    assert result["changed"] is False
    assert result["diff"]["before"] == result["diff"]["after"]
    assert len(writes(cluster)) == before


def test_present_in_check_mode_shows_the_change_and_writes_nothing(cluster):
    result = run_module(
        member.main, args(cluster, service_addr="10.0.0.14:8080", **NEW), check_mode=True, diff=True
    )

    assert result["changed"] is True
    assert result["diff"]["after"]["service_addr"] == "10.0.0.14:8080"
    assert writes(cluster) == []
    assert "n4" not in cluster.members


def test_present_fails_when_the_id_exists_at_other_addresses(cluster):
    taken = dict(NEW)
    taken["id"] = "n3"
    result = run_module(member.main, args(cluster, **taken))

    assert result["failed"] is True
    assert "exists with other addresses" in result["msg"]
    assert "remove it first" in result["msg"]
    assert writes(cluster) == []


def test_present_requires_the_addresses(cluster):
    result = run_module(member.main, args(cluster, id="n4"))

    assert result["failed"] is True
    assert "raft_addr" in result["msg"]


def test_present_fails_when_the_learner_never_votes(cluster):
    cluster.promote_on_add = False
    result = run_module(member.main, args(cluster, wait_timeout=1, **NEW))

    assert result["failed"] is True
    assert "did not become a voter" in result["msg"]


def test_absent_removes_a_follower_through_the_leader(cluster):
    result = run_module(
        member.main, args(cluster, node="n2", id="n3", state="absent", drain_timeout=2), diff=True
    )

    assert result["changed"] is True
    assert result["removal"] == {"id": "n3", "removed": True, "index": 50}
    assert result["diff"]["after"] == {}
    assert result["diff"]["before"]["id"] == "n3"
    delete = [r for r in writes(cluster) if r["method"] == "DELETE"]
    assert delete == [
        {
            "node": "n1",
            "method": "DELETE",
            "path": "/v1/members/n3",
            "query": {"drain_timeout": "2s"},
            "body": None,
        }
    ]
    assert "n3" not in cluster.members


def test_absent_hands_leadership_over_before_removing_the_leader(cluster):
    result = run_module(
        member.main, args(cluster, node="n1", id="n1", state="absent", handover_to="n3")
    )

    assert result["changed"] is True
    kinds = [(r["node"], r["method"], r["path"]) for r in writes(cluster)]
    assert kinds == [
        ("n1", "POST", "/v1/leadership/transfer"),
        ("n3", "DELETE", "/v1/members/n1"),
    ]
    assert [r["body"] for r in writes(cluster)][0] == {"to": "n3"}
    assert result["leader_id"] == "n3"
    assert "n1" not in cluster.members


def test_absent_of_the_leader_without_handover_to_leaves_the_hand_over_to_the_agent(cluster):
    result = run_module(member.main, args(cluster, node="n2", id="n1", state="absent"))

    assert result["changed"] is True
    kinds = [(r["node"], r["method"], r["path"]) for r in writes(cluster)]
    # One request: the leader, asked to remove itself, hands over and removes (the agent's
    # DELETE /v1/members/{id}); the module does not hand over itself.
    assert kinds == [("n1", "DELETE", "/v1/members/n1")]
    assert result["removal"] == {"id": "n1", "removed": True, "index": 50}
    assert result["leader_id"] == "n2"
    assert "n1" not in cluster.members


def test_absent_of_the_leader_without_transfer_leadership_ignores_handover_to(cluster):
    result = run_module(
        member.main,
        args(cluster, id="n1", state="absent", transfer_leadership=False, handover_to="n3"),
    )

    assert result["changed"] is True
    kinds = [(r["node"], r["method"], r["path"]) for r in writes(cluster)]
    assert kinds == [("n1", "DELETE", "/v1/members/n1")]
    assert "n1" not in cluster.members


def test_handover_to_a_member_that_does_not_vote_fails_before_any_write(cluster):
    cluster.add_node("n4", role="learner")
    for target in ("n4", "n1", "n9"):
        result = run_module(member.main, args(cluster, id="n1", state="absent", handover_to=target))

        assert result["failed"] is True
        assert f"handover_to {target!r} is not another voter" in result["msg"]
    assert writes(cluster) == []
    assert cluster.leader == "n1"


def test_handover_to_is_not_asked_for_when_the_member_is_not_the_leader(cluster):
    result = run_module(member.main, args(cluster, id="n3", state="absent", handover_to="n2"))

    assert result["changed"] is True
    kinds = [(r["node"], r["method"], r["path"]) for r in writes(cluster)]
    assert kinds == [("n1", "DELETE", "/v1/members/n3")]
    assert cluster.leader == "n1"


def test_absent_in_check_mode_changes_nothing(cluster):
    result = run_module(
        member.main, args(cluster, id="n1", state="absent"), check_mode=True, diff=True
    )

    assert result["changed"] is True
    assert result["diff"]["before"]["id"] == "n1"
    assert writes(cluster) == []
    assert cluster.leader == "n1"


def test_absent_of_a_non_member_is_not_a_change(cluster):
    result = run_module(member.main, args(cluster, id="n9", state="absent"))

    assert result["changed"] is False
    assert result["member"] == {}
    assert writes(cluster) == []


def test_the_last_member_is_never_removed():
    cluster = FakeCluster(ids=("solo",), leader="solo")
    try:
        result = run_module(member.main, args(cluster, node="solo", id="solo", state="absent"))
    finally:
        cluster.close()

    assert result["failed"] is True
    assert "last member" in result["msg"]
    assert writes(cluster) == []


def test_a_wrong_token_is_reported(cluster):
    result = run_module(member.main, dict(args(cluster, **NEW), api_token="wrong" * 8))

    assert result["failed"] is True
    assert result["status"] == 401


def test_no_agent_answering_is_reported(cluster):
    url = cluster.url("n1")
    cluster.close()
    result = run_module(
        member.main, {"api_url": url, "api_token": TOKEN, "id": "n1", "state": "absent"}
    )

    assert result["failed"] is True
    assert "cannot list the members" in result["msg"]


def test_the_token_can_come_from_a_file(cluster, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    result = run_module(
        member.main,
        {
            "api_url": cluster.url("n1"),
            "api_token_file": str(token_file),
            "id": "n9",
            "state": "absent",
        },
    )

    assert result["failed"] is False


@pytest.mark.parametrize(
    "bad", ["web 1", "x" * 300, "web1\n", "a\nforged line", "-web", "é", ""], ids=repr
)
def test_a_bad_member_id_fails_with_the_rule_before_the_cluster_is_asked(cluster, bad):
    for extra in ({**NEW, "id": bad}, {"id": "n3", "state": "absent", "handover_to": bad}):
        result = run_module(member.main, args(cluster, **extra))
        assert result["failed"] is True
        assert "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$" in result["msg"], result["msg"]
        assert "\n" not in result["msg"]
    assert cluster.requests == []


# ---- maintenance ---------------------------------------------------------------------------


def test_maintenance_takes_a_member_out_of_rotation_and_present_brings_it_back(cluster):
    result = run_module(
        member.main, args(cluster, id="n3", state="maintenance", reason="kernel"), diff=True
    )

    assert result["changed"] is True
    assert result["member"]["maintenance"] is True and result["member"]["weight"] == 0
    assert result["diff"]["before"]["maintenance"] is False
    assert result["diff"]["after"]["maintenance"] is True
    puts = [(r["method"], r["path"], r["body"]) for r in writes(cluster)]
    assert puts == [("PUT", "/v1/members/n3/maintenance", {"reason": "kernel"})]

    again = run_module(member.main, args(cluster, id="n3", state="maintenance"), diff=True)
    assert again["changed"] is False
    assert again["diff"]["before"] == again["diff"]["after"]
    assert len(writes(cluster)) == 1

    back = run_module(member.main, args(cluster, id="n3"), diff=True)  # no addresses needed
    assert back["changed"] is True
    assert back["member"]["maintenance"] is False
    assert back["diff"] == {
        "before": dict(back["diff"]["before"], maintenance=True),
        "after": dict(back["diff"]["before"], maintenance=False),
    }
    assert [(r["method"], r["path"]) for r in writes(cluster)][1:] == [
        ("DELETE", "/v1/members/n3/maintenance")
    ]
    assert run_module(member.main, args(cluster, id="n3"))["changed"] is False
    assert len(writes(cluster)) == 2


def test_maintenance_of_the_last_member_in_service_needs_force(cluster):
    """The agent answers 409 when no other member would stay in service: the task fails and
    says why; O(force) sends C(?force=true)."""
    for mid in ("n1", "n2"):
        assert run_module(member.main, args(cluster, id=mid, state="maintenance"))["changed"]
    refused = run_module(member.main, args(cluster, id="n3", state="maintenance"))
    assert refused["failed"] is True and "no member in service" in refused["msg"], refused
    assert cluster.members["n3"]["maintenance"] is False
    forced = run_module(member.main, args(cluster, id="n3", state="maintenance", force=True))
    assert forced["changed"] is True and forced["member"]["maintenance"] is True
    assert [r["query"] for r in writes(cluster) if r["path"].endswith("n3/maintenance")] == [
        {},
        {"force": "true"},
    ]


def test_maintenance_in_check_mode_writes_nothing(cluster):
    result = run_module(
        member.main, args(cluster, id="n2", state="maintenance"), check_mode=True, diff=True
    )
    assert result["changed"] is True and result["diff"]["after"]["maintenance"] is True
    assert writes(cluster) == []

    cluster.members["n2"]["maintenance"] = True
    back = run_module(member.main, args(cluster, id="n2"), check_mode=True, diff=True)
    assert back["changed"] is True and back["diff"]["after"]["maintenance"] is False
    assert writes(cluster) == []
    assert cluster.members["n2"]["maintenance"] is True


def test_maintenance_of_no_member_fails_before_writing(cluster):
    result = run_module(member.main, args(cluster, id="n9", state="maintenance"))

    assert result["failed"] is True
    assert "n9 is not a member" in result["msg"]
    assert writes(cluster) == []


# ---- odd input, refused before the cluster is asked (a hostile review) -----------------------


@pytest.mark.parametrize(
    ("extra", "wanted"),
    [
        ({"wait_timeout": float("nan")}, "wait_timeout must be a number of seconds"),
        ({"wait_timeout": -5}, "wait_timeout must be a number of seconds"),
        ({"drain_timeout": 1e308, "state": "absent", "id": "n3"}, "drain_timeout must be"),
        ({"api_timeout": 0}, "api_timeout must be a number of seconds above 0"),
        ({"api_timeout": -1}, "api_timeout must be"),
        ({"api_timeout": 1e308}, "api_timeout must be"),
        ({"raft_addr": "garbage"}, "raft_addr must be HOST:PORT"),
        ({"api_addr": "also garbage:7480"}, "api_addr must be HOST:PORT"),
        ({"service_addr": "10.0.0.14:99999"}, "service_addr must be HOST:PORT"),
    ],
    ids=repr,
)
def test_odd_timeouts_and_addresses_fail_before_the_cluster_is_asked(cluster, extra, wanted):
    # NaN waited forever (a learner added, then no end), 0 was taken for the default, 1e308
    # overflowed; a garbage address was "changed" in check mode and a 400 in a real run.
    for check_mode in (False, True):
        result = run_module(member.main, args(cluster, **{**NEW, **extra}), check_mode=check_mode)
        assert result["failed"] is True, result
        assert wanted in result["msg"], result["msg"]
    assert cluster.requests == []


def test_present_fails_when_the_id_exists_with_another_service_address(cluster):
    run_module(member.main, args(cluster, **NEW, service_addr="10.0.0.14:8080"))
    again = run_module(member.main, args(cluster, **NEW, service_addr="10.0.0.14:9999"))
    assert again["failed"] is True
    assert "exists with other addresses" in again["msg"] and "service_addr" in again["msg"]


def test_a_token_that_is_not_printable_ascii_fails_clearly(cluster):
    # The header went out as Latin-1: a UnicodeEncodeError from deep in http.client.
    result = run_module(member.main, args(cluster, api_token="\u2713" * 40, **NEW))
    assert result["failed"] is True
    assert "the API token must be printable ASCII" in result["msg"], result["msg"]
    assert cluster.requests == []


@pytest.mark.parametrize("url", ["https://10.0.0.1:99999", "http://:7480", "http://[::1:7480"])
def test_an_api_url_with_a_bad_port_or_host_fails_clearly(url):
    # (port 99999 was tried, and reported as "Connection refused")
    result = run_module(member.main, {"api_url": url, "api_token": TOKEN, **NEW})
    assert result["failed"] is True
    assert result["msg"].startswith("bad API URL"), result["msg"]
