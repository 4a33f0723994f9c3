"""Mutual TLS between transports on 127.0.0.1 (tls.py, transport.py), and the checks of the
TLS files at start (config.py). Certificates come from ca.py, as ``hafleet-agent ca`` makes
them; the expired one has its dates set by hand."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_transport import HOST, Inbox, addr, make, run, wait_until

from hafleet_agent import ca
from hafleet_agent.config import ConfigError, load
from hafleet_agent.tls import TLSConfig, peer_node_id


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with certificates for n1, n2, n3 on 127.0.0.1, and another CA with its own n1."""
    d = tmp_path_factory.mktemp("pki")
    ca.init_ca(d)
    for nid in ("n1", "n2", "n3"):
        ca.issue(d, nid, [HOST])
    other = d / "other"
    ca.init_ca(other)
    ca.issue(other, "n1", [HOST])
    # n1 again, signed by the real CA, but expired an hour ago
    ca_cert, ca_key = ca.load_ca(d)
    now = dt.datetime.now(dt.UTC)
    cert, key = ca.make_node_cert(
        ca_cert,
        ca_key,
        "n1",
        [HOST],
        not_before=now - dt.timedelta(days=2),
        not_after=now - dt.timedelta(hours=1),
    )
    ca.write_file(d / "expired.crt", ca.cert_pem(cert), 0o644)
    ca.write_file(d / "expired.key", ca.key_pem(key), 0o600)
    # a certificate for "n4" on another address only
    ca.issue(d, "n4", ["10.9.9.9"])
    return d


def tls(pki: Path, nid: str) -> TLSConfig:
    return TLSConfig.load(str(pki / "ca.crt"), str(pki / f"{nid}.crt"), str(pki / f"{nid}.key"))


def test_two_transports_speak_mutual_tls_and_know_each_others_certified_id(pki: Path) -> None:
    async def main() -> None:
        ia, ib = Inbox(), Inbox()
        a = make("n1", ia, tls=tls(pki, "n1"))
        b = make("n2", ib, tls=tls(pki, "n2"))
        await a.start()
        await b.start()
        try:
            assert a.send(addr(b), {"x": 1})
            assert b.send(addr(a), {"y": 2})
            [got_b] = await ib.wait_for(1)
            [got_a] = await ia.wait_for(1)
            assert got_b == {"x": 1} and got_a == {"y": 2}
            peer_at_b, peer_at_a = ib.frames[0][0], ia.frames[0][0]
            assert (peer_at_b.node_id, peer_at_b.certified) == ("n1", True)
            assert (peer_at_a.node_id, peer_at_a.certified) == ("n2", True)
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_a_plain_transport_cannot_talk_to_a_tls_one(pki: Path, caplog) -> None:
    caplog.set_level(logging.INFO, "hafleet.transport")

    async def main() -> None:
        plain = make("n1")
        secure = make("n2", tls=tls(pki, "n2"))
        await plain.start()
        await secure.start()
        try:
            plain.send(addr(secure), {"x": 1})
            await wait_until(lambda: secure.stats.auth_failures >= 1, "the refusal")
            assert secure.stats.frames_received == 0
        finally:
            await plain.stop()
            await secure.stop()

    run(main())
    assert "TLS handshake failed" in caplog.text


def _refusal_at_server(pki: Path, caplog, client: TLSConfig, client_id: str = "n1") -> str:
    """Dial a TLS transport (n2) from ``client``; return its log once it refused."""
    caplog.set_level(logging.INFO, "hafleet.transport")

    async def main() -> None:
        inbox = Inbox()
        server = make("n2", inbox, tls=tls(pki, "n2"))
        dialer = make(client_id, tls=client)
        await server.start()
        await dialer.start()
        try:
            dialer.send(addr(server), {"x": 1})
            await wait_until(
                lambda: server.stats.auth_failures + server.stats.peers_refused >= 1,
                "the server's refusal",
            )
            assert not inbox.frames
        finally:
            await dialer.stop()
            await server.stop()

    run(main())
    return "\n".join(r.getMessage() for r in caplog.records if "closing connection" in r.message)


def test_a_certificate_of_another_ca_is_refused(pki: Path, caplog) -> None:
    # The dialer trusts our CA (it checks the server fine) but shows a certificate of its own.
    foreign = _with_client_context(tls(pki, "n1"), _client_context(pki, "other/n1"))
    lines = _refusal_at_server(pki, caplog, foreign)
    assert "TLS handshake failed: certificate verify failed" in lines, lines


def test_an_expired_certificate_is_refused(pki: Path, caplog) -> None:
    ctx = _client_context(pki, "expired")
    expired = _with_client_context(tls(pki, "n1"), ctx)
    lines = _refusal_at_server(pki, caplog, expired)
    assert "certificate has expired" in lines, lines


def test_a_valid_certificate_cannot_claim_another_node_id(pki: Path, caplog) -> None:
    # n1's own certificate, and a hello that says n3: refused before the node sees it.
    lines = _refusal_at_server(pki, caplog, tls(pki, "n1"), client_id="n3")
    assert "its hello names node 'n3' but its certificate names 'n1'" in lines, lines


def test_the_dialler_checks_the_address_is_in_the_certificate(pki: Path, caplog) -> None:
    """n4's certificate names 10.9.9.9 only: who dials it at 127.0.0.1 refuses it."""
    caplog.set_level(logging.INFO, "hafleet.transport")

    async def main() -> None:
        server = make("n4", tls=tls(pki, "n4"))
        dialer = make("n1", tls=tls(pki, "n1"))
        await server.start()
        await dialer.start()
        try:
            dialer.send(addr(server), {"x": 1})
            await wait_until(lambda: dialer.stats.connect_failures >= 1, "the refusal")
        finally:
            await dialer.stop()
            await server.stop()

    run(main())
    assert "IP address mismatch" in caplog.text


def _client_context(pki: Path, name: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / f"{name}.crt"), str(pki / f"{name}.key"))
    return ctx


def _with_client_context(base: TLSConfig, ctx: ssl.SSLContext) -> TLSConfig:
    """``base`` with another dialling context (TLSConfig.load itself refuses an expired
    certificate, so the expired one is loaded into a context by hand)."""
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


# ---- the files at start ---------------------------------------------------------------------


def _load(pki: Path, node_id: str = "n1", **tls_files: str) -> Any:
    flags: dict[str, Any] = {"node_id": node_id, "mdns": False}
    flags.update(tls_files)
    cfg = load(None, flags)
    return cfg.tls


def _files(pki: Path, nid: str) -> dict[str, str]:
    return {
        "tls_ca_file": str(pki / "ca.crt"),
        "tls_cert_file": str(pki / f"{nid}.crt"),
        "tls_key_file": str(pki / f"{nid}.key"),
    }


def test_without_the_flags_there_is_no_tls(pki: Path) -> None:
    assert _load(pki) is None


def test_the_files_load_and_name_the_node(pki: Path) -> None:
    t = _load(pki, **_files(pki, "n1"))
    assert t.node_id == "n1"
    assert t.peer_server.verify_mode == ssl.CERT_REQUIRED
    assert t.peer_client.check_hostname and t.api_client.check_hostname
    assert t.api_server.verify_mode == ssl.CERT_NONE
    assert t.covers_host(HOST) and not t.covers_host("10.1.1.1")


@pytest.mark.parametrize("left_out", ["tls_ca_file", "tls_cert_file", "tls_key_file"])
def test_all_three_files_or_none(pki: Path, left_out: str) -> None:
    files = _files(pki, "n1")
    del files[left_out]
    with pytest.raises(ConfigError, match="all three of --tls-ca-file") as e:
        _load(pki, **files)
    assert f"missing: --{left_out.replace('_', '-')}" in str(e.value)


def test_a_certificate_of_another_node_is_refused_at_start(pki: Path) -> None:
    with pytest.raises(ConfigError, match="names node 'n2', but this node's id is 'n1'"):
        _load(pki, "n1", **_files(pki, "n2"))


def test_a_certificate_of_another_ca_is_refused_at_start(pki: Path) -> None:
    files = _files(pki, "n1")
    files["tls_cert_file"] = str(pki / "other" / "n1.crt")
    files["tls_key_file"] = str(pki / "other" / "n1.key")
    with pytest.raises(ConfigError, match="is not signed by the CA"):
        _load(pki, **files)


def test_an_expired_certificate_is_refused_at_start(pki: Path) -> None:
    files = _files(pki, "expired")
    with pytest.raises(ConfigError, match="expired on .*issue a new one"):
        _load(pki, **files)


def _files_with(pki: Path, tmp_path: Path, cert: Any, key: Any) -> dict[str, str]:
    """n1's files of ``pki`` with ``cert`` and ``key`` (written to ``tmp_path``) instead."""
    ca.write_file(tmp_path / "n1.crt", ca.cert_pem(cert), 0o644)
    ca.write_file(tmp_path / "n1.key", ca.key_pem(key), 0o600)
    return {
        **_files(pki, "n1"),
        "tls_cert_file": str(tmp_path / "n1.crt"),
        "tls_key_file": str(tmp_path / "n1.key"),
    }


def test_a_certificate_not_valid_yet_is_refused_at_start(pki: Path, tmp_path: Path) -> None:
    ca_cert, ca_key = ca.load_ca(pki)
    now = dt.datetime.now(dt.UTC)
    cert, key = ca.make_node_cert(
        ca_cert, ca_key, "n1", [HOST], not_before=now + dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=30),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="is not valid before .*is the clock right"):
        _load(pki, **_files_with(pki, tmp_path, cert, key))


def test_a_certificate_that_names_no_node_id_is_refused_at_start(pki: Path, tmp_path: Path) -> None:
    """Signed by the CA, valid, but with no hafleet://node/ URI (a certificate made by other
    tools): no node id to speak as."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    ca_cert, ca_key = ca.load_ca(pki)
    key = ca.new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([ca.parse_address(HOST)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    with pytest.raises(ConfigError, match="names no node id"):
        _load(pki, **_files_with(pki, tmp_path, cert, key))


def test_the_addresses_the_certificate_covers(pki: Path, tmp_path: Path) -> None:
    """IPv4, IPv6 (with or without brackets) and DNS names (any case, a trailing dot), as
    the dialling peers' hostname check sees them."""
    d = tmp_path / "pki"
    ca.init_ca(d)
    ca.issue(d, "n5", [HOST, "::1", "Node5.example"])
    t = TLSConfig.load(str(d / "ca.crt"), str(d / "n5.crt"), str(d / "n5.key"))
    assert t.node_id == "n5"
    for host in (HOST, "::1", "[::1]", "node5.example", "NODE5.example."):
        assert t.covers_host(host), host
    for host in ("10.1.1.1", "::2", "node6.example", "example"):
        assert not t.covers_host(host), host


def test_an_agent_with_tls_does_not_load_cryptography(pki: Path) -> None:
    """The start-up checks use Python's ssl alone: the cryptography package (~10 MiB of an
    agent's resident memory) is for ``hafleet-agent ca`` only."""
    code = (
        "import sys; from hafleet_agent.tls import TLSConfig; "
        f"t = TLSConfig.load({str(pki / 'ca.crt')!r}, {str(pki / 'n1.crt')!r}, "
        f"{str(pki / 'n1.key')!r}); "
        "print(t.node_id, sorted(m for m in sys.modules if m.startswith('cryptography')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["n1", "[]"], out.stdout + out.stderr


def test_a_key_others_can_read_is_refused(pki: Path, tmp_path: Path) -> None:
    files = _files(pki, "n1")
    key = tmp_path / "n1.key"
    key.write_bytes((pki / "n1.key").read_bytes())
    os.chmod(key, 0o644)
    files["tls_key_file"] = str(key)
    with pytest.raises(ConfigError, match="mode 0644; it must be 0600"):
        _load(pki, **files)


def test_a_key_of_another_certificate_is_refused(pki: Path) -> None:
    files = _files(pki, "n1")
    files["tls_key_file"] = str(pki / "n2.key")
    with pytest.raises(ConfigError, match="does not go with certificate"):
        _load(pki, **files)


def test_a_ca_file_without_a_certificate_is_named(pki: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    files = {**_files(pki, "n1"), "tls_ca_file": str(junk)}
    with pytest.raises(ConfigError, match="cannot read the TLS CA file .*junk.crt"):
        _load(pki, **files)


def test_a_missing_file_is_named(pki: Path) -> None:
    files = _files(pki, "n1")
    files["tls_ca_file"] = str(pki / "nope.crt")
    with pytest.raises(ConfigError, match="nope.crt"):
        _load(pki, **files)


@pytest.mark.parametrize(
    ("peercert", "expected"),
    [
        (
            {
                "subject": ((("commonName", "n1"),),),
                "subjectAltName": (("URI", "hafleet://node/n1"), ("IP Address", "127.0.0.1")),
            },
            "n1",
        ),
        ({"subjectAltName": (("URI", "hafleet://node/n1"),)}, "n1"),
        ({"subject": ((("commonName", "n1"),),)}, None),  # no URI: no id
        (
            {
                "subject": ((("commonName", "n2"),),),
                "subjectAltName": (("URI", "hafleet://node/n1"),),
            },
            None,  # the two disagree
        ),
        (
            {"subjectAltName": (("URI", "hafleet://node/n1"), ("URI", "hafleet://node/n2"))},
            None,  # two ids
        ),
        ({"subjectAltName": (("URI", "hafleet://node/-x"),)}, None),  # not a member id
        ({}, None),
        (None, None),
    ],
)
def test_peer_node_id(peercert: Any, expected: str | None) -> None:
    assert peer_node_id(peercert) == expected


def test_the_python_ssl_view_of_an_issued_certificate_names_the_node(pki: Path) -> None:
    """What getpeercert() gives for a certificate of ``ca issue``: the id is found."""

    async def main() -> None:
        server_ctx = tls(pki, "n2").peer_server
        seen: list[Any] = []

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(writer.get_extra_info("peercert"))
            writer.close()

        server = await asyncio.start_server(on_conn, HOST, 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection(
                HOST, port, ssl=tls(pki, "n3").peer_client, server_hostname=HOST
            )
            assert peer_node_id(writer.get_extra_info("peercert")) == "n2"
            await wait_until(lambda: bool(seen), "the server's view")
            assert peer_node_id(seen[0]) == "n3"
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_two_cas_in_the_ca_file_trust_both_during_a_ca_change(pki: Path, tmp_path: Path) -> None:
    """security.md's CA change: with both CAs in --tls-ca-file, a node of the old CA and a
    node of the new one talk."""
    both = tmp_path / "both.crt"
    both.write_bytes((pki / "ca.crt").read_bytes() + (pki / "other" / "ca.crt").read_bytes())
    old = TLSConfig.load(str(both), str(pki / "n2.crt"), str(pki / "n2.key"))
    new = TLSConfig.load(str(both), str(pki / "other" / "n1.crt"), str(pki / "other" / "n1.key"))

    async def main() -> None:
        ia, ib = Inbox(), Inbox()
        a = make("n1", ia, tls=new)
        b = make("n2", ib, tls=old)
        await a.start()
        await b.start()
        try:
            assert a.send(addr(b), {"x": 1}) and b.send(addr(a), {"y": 2})
            await ib.wait_for(1)
            await ia.wait_for(1)
        finally:
            await a.stop()
            await b.stop()

    run(main())


def test_the_toml_keys_name_the_files_too(pki: Path, tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text("".join(f'{k} = "{v}"\n' for k, v in _files(pki, "n2").items()))
    cfg = load(str(conf), {"node_id": "n2", "mdns": False})
    assert cfg.tls is not None and cfg.tls.node_id == "n2"
    # the certificate from the file must still name the node id the flags give
    with pytest.raises(ConfigError, match="names node 'n2', but this node's id is 'n1'"):
        _ = load(str(conf), {"node_id": "n1", "mdns": False}).tls
