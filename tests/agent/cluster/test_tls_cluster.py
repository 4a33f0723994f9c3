"""Agents with TLS on (issue 16): certificates made by ``hafleet-agent ca``, mutual TLS on the
Raft port, HTTPS on the API. Each refusal must reach the refusing agent's log in a clear line.
(tests/agent/transport/test_tls.py has the transport-level cases in one process.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import API_PORT, FORM_TIMEOUT, Cluster, run_cli

from hafleet_agent import ca
from hafleet_agent.apiclient import APIClient, APIError
from hafleet_agent.tls import TLSConfig
from hafleet_agent.transport import Transport

MakeCluster = Callable[..., Cluster]


def tls_cluster(make_cluster: MakeCluster, n: int = 3) -> Cluster:
    cluster = make_cluster(tls=True)
    cluster.add_many(n, bootstrap_expect=n)
    cluster.wait_agreed()
    return cluster


def in_log(cluster: Cluster, nid: str, text: str) -> bool:
    return text in cluster.node(nid).log()


def test_three_agents_with_certificates_form_a_group_and_serve_https(
    make_cluster: MakeCluster,
) -> None:
    cluster = tls_cluster(make_cluster)
    lead = cluster.leader()
    follower = next(nid for nid in cluster.nodes if nid != lead)
    for nid in cluster.nodes:
        log = cluster.node(nid).log()
        assert "TLS is on: mutual TLS on the Raft port, HTTPS on the API; certificate" in log
        assert "TLS is off" not in log
        # HTTPS, the agent's certificate checked against the cluster CA and its address
        assert cluster.api(nid, "GET", "/v1/health", token=None)[0] == 200
        assert cluster.ok(nid, "GET", "/v1/status")["leader_id"] == lead
    # a write to a follower is forwarded to the leader over HTTPS
    item = cluster.put(follower, "tls/a", {"v": 1})
    assert cluster.get(lead, "tls/a")[1]["value"] == {"v": 1}
    assert item["modify_index"] > 0
    # a client with another CA refuses the agent's certificate
    other = cluster.dir / "other-ca"
    assert run_cli("ca", "init", "--dir", str(other)).returncode == 0
    ctx = ssl.create_default_context(cafile=str(other / "ca.crt"))
    conn = http.client.HTTPSConnection(cluster.node(lead).host, API_PORT, timeout=5, context=ctx)
    try:
        conn.request("GET", "/v1/health")
        raise AssertionError("a certificate of another CA was accepted")
    except ssl.SSLCertVerificationError:
        pass
    finally:
        conn.close()


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_plain_http_to_the_https_api_is_answered_400_use_https(make_cluster: MakeCluster) -> None:
    cluster = tls_cluster(make_cluster)
    node = cluster.node("n1")
    with socket.create_connection((node.host, API_PORT), timeout=10) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = _read_all(s)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert b"Connection: close" in head
    assert b"use https://" in body, body
    # hafleet's own client, given http:// by mistake, shows the agent's words
    with pytest.raises(APIError) as caught:
        APIClient(f"http://{node.host}:{API_PORT}", timeout=10).health()
    assert caught.value.status == 400
    assert "plain HTTP sent to the HTTPS port" in caught.value.message, caught.value.message
    cluster.wait_for(
        lambda: in_log(
            cluster,
            "n1",
            "refusing an API connection from 127.0.0.1: plain HTTP to the HTTPS port "
            "(answered 400: use https://)",
        ),
        FORM_TIMEOUT,
        "the refusal in n1's log",
    )
    # HTTPS still served, and a connection that sends nothing and closes costs nothing
    with socket.create_connection((node.host, API_PORT), timeout=10):
        pass
    assert cluster.api("n1", "GET", "/v1/health", token=None)[0] == 200


def _dial(
    cluster: Cluster, target: str, node_id: str, tls: TLSConfig, key: bytes | None = None
) -> None:
    """A transport on 127.0.0.1 that says it is ``node_id`` and shows ``tls``'s certificate
    dials ``target``'s Raft port and queues a frame (the refusal is in the target's log)."""

    async def main() -> None:
        t = Transport(
            node_id=node_id,
            cluster=cluster.name,
            key=key or cluster.key_file.read_bytes().strip(),
            bind_host="127.0.0.1",
            port=0,
            advertise=None,
            on_frame=lambda peer, obj: None,
            tls=tls,
            backoff_max=0.2,
        )
        await t.start()
        try:
            t.send(cluster.node(target).raft_addr, {"k": "hello"})
            async with asyncio.timeout(10):
                while t.stats.connect_failures + t.stats.auth_failures + t.stats.connects < 1:
                    await asyncio.sleep(0.02)
        finally:
            await t.stop()

    asyncio.run(main())


def _context(ca_file: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca_file))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _tls_with_client_context(base: TLSConfig, ctx: ssl.SSLContext) -> TLSConfig:
    return TLSConfig(
        base.ca_file,
        base.cert_file,
        base.key_file,
        base.node_id,
        peer_server=base.peer_server,
        peer_client=ctx,
        api_server=base.api_server,
        api_client=base.api_client,
    )


def test_the_raft_port_refuses_wrong_certificates_with_a_clear_line(
    make_cluster: MakeCluster,
) -> None:
    """A key holder with a certificate of another CA, with n1's valid certificate claiming
    to be n2, and with an expired certificate of the cluster's CA: each refused by n3."""
    cluster = tls_cluster(make_cluster)
    assert cluster.tls_dir is not None
    ca_file = cluster.tls_dir / "ca.crt"
    n1 = TLSConfig.load(
        str(ca_file), str(cluster.tls_dir / "n1.crt"), str(cluster.tls_dir / "n1.key")
    )
    # another CA's certificate for "n9" (the dialler trusts the cluster's CA, so it is the
    # agent that refuses)
    other = cluster.dir / "other-ca"
    assert run_cli("ca", "init", "--dir", str(other)).returncode == 0
    assert (
        run_cli(
            "ca", "issue", "--dir", str(other), "--node-id", "n9", "--address", "127.0.0.1"
        ).returncode
        == 0
    )
    foreign = _context(ca_file, other / "n9.crt", other / "n9.key")
    _dial(cluster, "n3", "n9", _tls_with_client_context(n1, foreign))
    cluster.wait_for(
        lambda: in_log(
            cluster,
            "n3",
            "TLS handshake failed: certificate verify failed: unable to get local issuer",
        ),
        FORM_TIMEOUT,
        "n3 to log the certificate of another CA",
    )

    # a valid certificate (n1's) used to claim another node id (n2)
    _dial(cluster, "n3", "n2", n1)
    cluster.wait_for(
        lambda: in_log(cluster, "n3", "its hello names node 'n2' but its certificate names 'n1'"),
        FORM_TIMEOUT,
        "n3 to log the claim",
    )

    # an expired certificate of the cluster's own CA
    ca_cert, ca_key = ca.load_ca(cluster.tls_dir)
    now = dt.datetime.now(dt.UTC)
    cert, key = ca.make_node_cert(
        ca_cert,
        ca_key,
        "n1",
        ["127.0.0.1"],
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(minutes=10),
    )
    ca.write_file(cluster.dir / "expired.crt", ca.cert_pem(cert), 0o644)
    ca.write_file(cluster.dir / "expired.key", ca.key_pem(key), 0o600)
    expired = _context(ca_file, cluster.dir / "expired.crt", cluster.dir / "expired.key")
    _dial(cluster, "n3", "n1", _tls_with_client_context(n1, expired))
    cluster.wait_for(
        lambda: in_log(cluster, "n3", "certificate verify failed: certificate has expired"),
        FORM_TIMEOUT,
        "n3 to log the expired certificate",
    )
    # and the group goes on, its membership untouched
    st = cluster.wait_agreed()
    assert {m["id"] for m in next(iter(st.values()))["members"]} == {"n1", "n2", "n3"}


def test_an_agent_refuses_to_start_with_a_certificate_of_another_node(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(tls=True)
    assert cluster.tls_dir is not None
    cluster.issue("n2", cluster.host(1))
    node = cluster.add(
        "n1",
        bootstrap_expect=1,
        extra_args=["--tls-cert-file", str(cluster.tls_dir / "n2.crt")]
        + ["--tls-key-file", str(cluster.tls_dir / "n2.key")],
    )
    assert cluster.wait_exit(node) == 2
    assert "names node 'n2', but this node's id is 'n1'" in node.log()


def test_kill9_of_the_leader_fails_over_under_tls(make_cluster: MakeCluster) -> None:
    cluster = tls_cluster(make_cluster)
    old = cluster.leader()
    cluster.put(old, "before", 1)
    cluster.kill9(old)
    rest = [nid for nid in cluster.nodes if nid != old]
    new = cluster.leader(rest)
    assert new != old
    follower = next(nid for nid in rest if nid != new)
    cluster.put(follower, "after", 2)  # forwarded over HTTPS to the new leader
    assert cluster.get(new, "before")[1]["value"] == 1
    cluster.restart(old)
    cluster.wait_agreed()
    cluster.wait_for(
        lambda: cluster.get(old, "after", stale=True)[0] == 200, FORM_TIMEOUT, "old catches up"
    )


def test_without_tls_the_agent_says_it_is_unencrypted(make_cluster: MakeCluster) -> None:
    cluster = make_cluster()
    node = cluster.add(bootstrap_expect=1)
    cluster.wait_agreed()
    lines = [ln for ln in node.log().splitlines() if "TLS is off" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0], lines
    assert cluster.api(node, "GET", "/v1/health", token=None)[0] == 200  # plain HTTP as before


def test_a_node_joins_through_a_follower_under_tls(make_cluster: MakeCluster) -> None:
    """A relayed join names the joiner, not the follower that relays it: under TLS the leader
    does not admit it but says hello to the joiner, which then asks the leader itself."""
    cluster = tls_cluster(make_cluster)
    lead = cluster.leader()
    follower = next(nid for nid in cluster.nodes if nid != lead)
    joiner = cluster.add("n4", join=[cluster.node(follower).raft_addr])
    cluster.wait_agreed()
    assert "n4" in cluster.member_ids(lead)
    assert cluster.ok(joiner, "GET", "/v1/status")["leader_id"] == lead
