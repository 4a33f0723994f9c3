"""hafleet_agent.apiclient, the one client of the HTTP API, against real agents (harness.py):
every route, the path encoding of keys and ids, the error mapping and the failover."""

from __future__ import annotations

import ast
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import Cluster, founded_cluster

from hafleet_agent import apiclient, ids
from hafleet_agent.apiclient import APIClient, APIError, api_path

REPO = Path(__file__).resolve().parents[3]
SOURCE = REPO / "agent" / "src" / "hafleet_agent" / "apiclient.py"
VENDORED = REPO / "plugins" / "module_utils" / "_api_client.py"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with founded_cluster(tmp_path_factory.mktemp("apiclient")) as c:
        yield c


def _client(c: Cluster, *nodes: str, **kw: object) -> APIClient:
    return APIClient([c.node(n).api_url for n in nodes], token=c.token, timeout=10, **kw)


def _follower(c: Cluster) -> str:
    lead = c.leader()
    return next(nid for nid in sorted(c.nodes) if nid != lead)


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


def test_the_source_is_python_38_syntax() -> None:
    assert Path(apiclient.__file__).resolve() == SOURCE
    ast.parse(SOURCE.read_text(encoding="utf-8"), feature_version=(3, 8))


def test_the_collection_holds_a_byte_identical_copy() -> None:
    """``make vendor`` writes the copy; a change here without it fails."""
    assert VENDORED.read_bytes() == SOURCE.read_bytes(), f"run make vendor: {VENDORED} differs"


@pytest.mark.parametrize(
    "value",
    ["n1", "a" * 63, "a" * 64, "node-1.x_y", "-n", ".n", "n\n", "n 1", "", "ü", "n/1", 1, None],
)
def test_the_member_id_grammar_is_the_agents(value: object) -> None:
    assert (apiclient.member_id_error(value) is None) == ids.valid_member_id(value)
    assert apiclient.MEMBER_ID_RULE == ids.MEMBER_ID_RULE


def test_node_routes_health_status_members_weights(cluster: Cluster) -> None:
    c = cluster
    lead = c.leader()
    for nid in c.nodes:
        client = _client(c, nid)
        assert client.health() == {"ok": True}
        assert APIClient(c.node(nid).api_url).health() == {"ok": True}  # no token needed
        st = client.status()
        assert st["node_id"] == nid and st["leader_id"] == lead
        assert {m["id"] for m in client.members()} == set(c.nodes)
        assert {"version", "weights"} <= set(client.weights())
        assert client.leader_client().base_url == c.node(lead).api_url


def test_kv_routes_through_a_follower(cluster: Cluster) -> None:
    c = cluster
    client = _client(c, _follower(c))
    first = client.kv_put("client/k", {"a": [1, 2]}, cas=0)
    assert first["key"] == "client/k" and first["value"] == {"a": [1, 2]}
    index = first["modify_index"]
    assert client.kv_get("client/k") == first
    with pytest.raises(APIError) as caught:
        client.kv_put("client/k", "x", cas=0)
    assert caught.value.status == 409 and caught.value.message
    assert not caught.value.maybe_applied and not caught.value.retryable
    second = client.kv_put("client/k", "b", cas=index)
    assert second["modify_index"] > index
    items = client.kv_list("client/")["items"]
    assert [(i["key"], i["value"]) for i in items] == [("client/k", "b")]
    deadline = time.monotonic() + 10
    while client.kv_get("client/k", stale=True)["value"] != "b":  # local copy catches up
        assert time.monotonic() < deadline
    client.kv_delete("client/k", cas=second["modify_index"])
    with pytest.raises(APIError) as caught:
        client.kv_get("client/k")
    assert caught.value.status == 404 and "client/k" in caught.value.message
    assert caught.value.body == {"error": caught.value.message}


@pytest.mark.parametrize(
    "key",
    ["a/b c", "q?x=1&y#z", "100%", "a.b/..c", "ü/€", "+ +", "%2F", "a%2Fb"],
)
def test_keys_reach_the_agent_unchanged(cluster: Cluster, key: str) -> None:
    """Every key is one path segment: it comes back as it went, also forwarded by a
    follower, and it is stored under its own name, not one a URL normalisation made."""
    c = cluster
    client = _client(c, _follower(c))
    item = client.kv_put(key, key)
    assert item["key"] == key
    assert client.kv_get(key)["value"] == key
    assert [i["key"] for i in client.kv_list(key)["items"]][:1] == [key]
    client.kv_delete(key)
    with pytest.raises(APIError) as caught:
        client.kv_get(key)
    assert caught.value.status == 404


@pytest.mark.parametrize("key", [".", "..", "../up", "a/../b", "a/./b", "dir/", "a//b"])
def test_keys_with_dot_or_empty_segments_arrive_as_written_and_are_refused(
    cluster: Cluster, key: str
) -> None:
    """No URL normalisation folds them on the way, through a follower neither: the agent
    sees the key as written and refuses it (400, its message quotes the key)."""
    c = cluster
    for nid in (c.leader(), _follower(c)):
        with pytest.raises(APIError) as caught:
            _client(c, nid).kv_put(key, 1)
        assert caught.value.status == 400, caught.value
        assert repr(key) in caught.value.message


def test_one_path_encoding() -> None:
    assert api_path("v1", "kv", "a/b c?") == "/v1/kv/a%2Fb%20c%3F"
    assert api_path("v1", "kv", "%2F") == "/v1/kv/%252F"
    assert api_path("v1", "members", "n1") == "/v1/members/n1"


def test_watch_waits_for_the_index_and_times_out_unchanged(cluster: Cluster) -> None:
    c = cluster
    client = _client(c, _follower(c))
    index = client.status()["applied_index"]
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        waiting = pool.submit(client.watch, index, 20)
        _client(c, c.leader()).kv_put("client/watch", 1)
        w = waiting.result(timeout=30)
    assert time.monotonic() - started < 20
    assert w["changed"] is True and w["index"] > index
    assert {m["id"] for m in w["members"]} == set(c.nodes)
    started = time.monotonic()
    w = client.watch(10**9, wait=0.5)
    assert w["changed"] is False and 0.4 <= time.monotonic() - started < 10


def test_errors_carry_the_status_and_the_agents_text(cluster: Cluster) -> None:
    c = cluster
    client = _client(c, c.leader())
    with pytest.raises(APIError) as caught:
        client.add_member("bad id", "127.0.0.1:1", "127.0.0.1:2")
    assert caught.value.status == 400 and "id" in caught.value.message
    with pytest.raises(APIError) as caught:
        client.remove_member("n99", drain_timeout=1)
    assert caught.value.status == 404 and "n99" in caught.value.message
    assert caught.value.url.endswith("/v1/members/n99?drain_timeout=1s")
    with pytest.raises(APIError) as caught:
        client.transfer_leadership("no such/one")
    assert caught.value.status == 400
    with pytest.raises(APIError) as caught:
        client.watch(0, wait=10_000)
    assert caught.value.status == 400 and "wait" in caught.value.message
    for token in (None, "w" * 40):
        with pytest.raises(APIError) as caught:
            APIClient(c.node(c.leader()).api_url, token=token).kv_get("x")
        assert caught.value.status == 401
        assert str(caught.value).startswith("GET http://")


def test_leadership_transfer(cluster: Cluster) -> None:
    c = cluster
    old = c.leader()
    target = _follower(c)
    assert _client(c, old).transfer_leadership(target) == {"leader_id": target}
    assert c.leader() == target
    # To the node that leads (asked of it, or of a follower that forwards): done already,
    # its id (it waited for the write timeout and answered 503 before).
    for asked in (target, old):
        assert _client(c, asked).transfer_leadership(target) == {"leader_id": target}
        assert c.leader() == target


def test_a_transfer_to_an_unreachable_voter_is_refused_at_once(tmp_path: Path) -> None:
    # It waited for the write timeout, then answered 504 "did not finish".
    with founded_cluster(tmp_path / "c") as c:
        lead = c.leader()
        down, other = c.followers()
        c.kill9(down)
        c.wait_for(
            lambda: c.get(lead, f"health/unreachable/{down}", stale=True)[0] == 200,
            20,
            f"{down} marked unreachable",
        )
        started = time.monotonic()
        with pytest.raises(APIError) as caught:
            _client(c, lead).transfer_leadership(down)
        assert caught.value.status == 409 and "unreachable" in str(caught.value), caught.value
        assert time.monotonic() - started < 2.0  # (under the write timeout it waited for)
        assert c.leader() == lead
        # Without --to, the reachable voter takes it.
        assert _client(c, lead).transfer_leadership(None) == {"leader_id": other}


def test_failover_skips_a_dead_url_and_learns_members(cluster: Cluster) -> None:
    c = cluster
    follower = _follower(c)
    dead = _dead_url()
    client = APIClient([dead, c.node(follower).api_url], token=c.token, timeout=5)
    assert client.kv_put("client/failover", 1)["value"] == 1  # refused: never sent, next URL
    assert client.base_url == c.node(follower).api_url
    client.current = 0
    assert {m["id"] for m in client.members()} == set(c.nodes)
    # status describes one agent: never another one's
    client.current = 0
    with pytest.raises(APIError) as caught:
        client.status()
    assert caught.value.status is None and not caught.value.sent
    assert "no HTTP answer" in str(caught.value)
    client.learn(client.members())
    assert client.urls[:2] == [dead, c.node(follower).api_url]
    assert set(client.urls[2:]) == {c.node(n).api_url for n in c.nodes} - {client.urls[1]}
    single = APIClient(dead, token=c.token, timeout=5)
    with pytest.raises(APIError) as caught:
        single.kv_put("client/failover", 2)
    assert caught.value.status is None and caught.value.retryable
    assert not caught.value.maybe_applied


def test_bad_urls_are_refused() -> None:
    with pytest.raises(ValueError):
        APIClient("127.0.0.1:7480")
    with pytest.raises(ValueError):
        APIClient([])
    with pytest.raises(ValueError):
        APIClient().url("v1/health")


def test_avoid_moves_off_a_leaving_members_url_when_another_is_left() -> None:
    client = APIClient(["http://127.0.0.1:1", "http://127.0.0.2:1"])
    client.learn([{"api_addr": "127.0.0.3:1"}])
    leaving = [{"id": "a", "api_addr": "127.0.0.1:1"}, {"id": "c", "api_addr": "127.0.0.3:1"}]
    client.avoid([], "nothing to avoid")
    assert client.base_url == "http://127.0.0.1:1"
    client.avoid(leaving, "draining")
    assert client.base_url == "http://127.0.0.2:1"
    client.avoid(leaving, "draining")  # not on a shunned URL: stays
    assert client.base_url == "http://127.0.0.2:1"
    client.current = 2  # on 127.0.0.3: the next URL not shunned wraps around to .2
    client.avoid(leaving, "draining")
    assert client.base_url == "http://127.0.0.2:1"
    only = APIClient("http://127.0.0.1:1")
    only.avoid(leaving, "draining")  # nowhere else to go: stays
    assert only.base_url == "http://127.0.0.1:1"
