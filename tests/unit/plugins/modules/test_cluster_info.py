# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.cluster_info against a stand-in cluster."""

from __future__ import annotations

import pytest

from ansible_collections.hafleet.cluster.plugins.modules import cluster_info
from ansible_collections.hafleet.cluster.tests.unit.plugins.fake_cluster import TOKEN, FakeCluster
from ansible_collections.hafleet.cluster.tests.unit.plugins.modules.utils import run_module


@pytest.fixture(name="cluster")
def cluster_fixture():
    with FakeCluster(ids=("n1", "n2", "n3"), leader="n2") as cluster:
        yield cluster


def test_reads_leader_term_members_weights_and_metrics(cluster):
    cluster.add_node("n4", role="learner")
    result = run_module(cluster_info.main, {"api_url": cluster.url("n1"), "api_token": TOKEN})

    assert result["changed"] is False
    assert result["leader_id"] == "n2"
    assert result["term"] == 3
    assert result["cluster"] == "test"
    assert result["cluster_id"] == "test-1234"
    assert result["voters"] == ["n1", "n2", "n3"]
    assert result["learners"] == ["n4"]
    assert result["weights"]["weights"]["n1"] == 128
    assert result["metrics"]["n3"]["cpu_count"] == 2
    assert result["node"]["node_id"] == "n1"
    assert "members" not in result["node"]
    assert {m["id"] for m in result["members"]} == {"n1", "n2", "n3", "n4"}


def test_reads_the_same_in_check_mode(cluster):
    plain = run_module(cluster_info.main, {"api_url": cluster.url("n1"), "api_token": TOKEN})
    checked = run_module(
        cluster_info.main, {"api_url": cluster.url("n1"), "api_token": TOKEN}, check_mode=True
    )

    assert checked["changed"] is False
    assert checked["voters"] == plain["voters"]
    assert all(r["method"] == "GET" for r in cluster.requests)


def test_falls_back_to_the_next_agent(cluster):
    cluster.down.add("n1")
    result = run_module(
        cluster_info.main,
        {
            "api_url": cluster.url("n1"),
            "fallback_api_urls": [cluster.url("n3")],
            "api_token": TOKEN,
        },
    )

    assert result["failed"] is False
    assert result["api_url"] == cluster.url("n3")
    assert result["node"]["node_id"] == "n3"


def test_fails_when_no_agent_answers(cluster):
    cluster.down.update({"n1", "n2"})
    result = run_module(
        cluster_info.main,
        {
            "api_url": cluster.url("n1"),
            "fallback_api_urls": [cluster.url("n2")],
            "api_token": TOKEN,
        },
    )

    assert result["failed"] is True
    assert result["msg"].startswith("no agent answered")
    assert len(result["errors"]) == 2


def test_a_refused_token_fails_at_once(cluster):
    result = run_module(
        cluster_info.main,
        {
            "api_url": cluster.url("n1"),
            "fallback_api_urls": [cluster.url("n2")],
            "api_token": "x" * 40,
        },
    )

    assert result["failed"] is True
    assert result["status"] == 401
    assert "token was refused" in result["msg"]


def test_a_bad_url_is_reported():
    result = run_module(cluster_info.main, {"api_url": "10.0.0.1:7480", "api_token": TOKEN})

    assert result["failed"] is True
    assert "http://" in result["msg"]
