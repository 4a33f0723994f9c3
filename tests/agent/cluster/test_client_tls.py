"""Every client speaks HTTPS with CA verification (issue 16): the API client
(``apiclient.py``, vendored byte for byte as the collection's ``_api_client.py``), the CLI's
``--ca-file`` and the balancer syncer's ``--ca-file``, against a small HTTPS stand-in agent
on 127.0.0.1 whose certificate a CA made here signed.

Each client: the right CA verifies; another CA is refused with a clear error before the
request (and its token) goes out; ``validate_certs=False`` skips the check; a CA file that
cannot be loaded is a usage error.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from agents import write_secret
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from stub_agent import send_json

from hafleet_agent import cli
from hafleet_agent.apiclient import APIClient, APIError
from hafleet_agent.balancer import BalancerError, Options
from hafleet_agent.balancer.syncer import Balancer

TOKEN = "t" * 40
HOST = "127.0.0.1"


# ---- certificates ---------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path, cn: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{cn}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(
    directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("n1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "n1.crt", directory / "n1.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# ---- an HTTPS stand-in agent ----------------------------------------------------------------


class FakeAgent(ThreadingHTTPServer):
    """Enough of the API for the clients here: status, members, watch, KV puts. ``seen``:
    (method, path, Authorization) of every request that got through the handshake."""

    daemon_threads = True

    def __init__(self, cert: Path, key: Path, writes_allowed: bool = True) -> None:
        super().__init__((HOST, 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.seen: list[tuple[str, str, str]] = []
        self.writes_allowed = writes_allowed

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on our certificate: nothing to print


class Handler(BaseHTTPRequestHandler):
    server: FakeAgent

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: Any) -> None:
        send_json(self, status, body)

    def _seen(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization", "")))

    def do_GET(self) -> None:
        self._seen()
        member = {"id": "n1", "role": "leader", "healthy": True, "raft_addr": "h:1"}
        if self.path == "/v1/status":
            self._answer(
                200,
                {
                    "node_id": "n1",
                    "cluster": "c",
                    "cluster_id": "c-1",
                    "term": 3,
                    "leader_id": "n1",
                    "commit_index": 7,
                },
            )
        elif self.path == "/v1/members":
            self._answer(200, [member])
        elif self.path.startswith("/v1/watch"):
            self._answer(200, {"index": 7, "changed": True, "leader_id": "n1", "members": [member]})
        else:
            self._answer(404, {"error": "no such thing"})

    def do_PUT(self) -> None:
        self._seen()
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self.server.writes_allowed:
            self._answer(403, {"error": "this token may only read"})
            return
        self._answer(200, {"key": self.path.rsplit("/", 1)[-1], "value": body.get("value")})


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca, ca_key, ca_cert = make_ca(tmp_path, "cluster-ca")
    other, _, _ = make_ca(tmp_path, "other-ca")
    cert, key = make_server_cert(tmp_path, ca_key, ca_cert)
    return {"ca": ca, "other": other, "cert": cert, "key": key}


def _serve(server: FakeAgent) -> Iterator[FakeAgent]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def agent(pki: dict[str, Path]) -> Iterator[FakeAgent]:
    yield from _serve(FakeAgent(pki["cert"], pki["key"]))


@pytest.fixture
def read_only_agent(pki: dict[str, Path]) -> Iterator[FakeAgent]:
    yield from _serve(FakeAgent(pki["cert"], pki["key"], writes_allowed=False))


# ---- the API client -------------------------------------------------------------------------


def test_the_client_verifies_against_the_cluster_ca(agent: FakeAgent, pki: dict[str, Path]):
    client = APIClient(agent.url, token=TOKEN, ca_path=str(pki["ca"]))
    assert client.status()["node_id"] == "n1"
    assert client.kv_put("k", 1)["value"] == 1
    assert agent.seen == [
        ("GET", "/v1/status", f"Bearer {TOKEN}"),
        ("PUT", "/v1/kv/k", f"Bearer {TOKEN}"),
    ]
    # learned members and for_api_addr keep https and the CA
    other = client.for_api_addr(f"{HOST}:{agent.server_address[1]}")
    assert other.base_url == agent.url and other.status()["term"] == 3


def test_another_ca_is_refused_before_anything_is_sent(agent: FakeAgent, pki: dict[str, Path]):
    client = APIClient(agent.url, token=TOKEN, ca_path=str(pki["other"]))
    with pytest.raises(APIError) as caught:
        client.kv_put("k", 1)
    exc = caught.value
    assert exc.status is None and exc.sent is False and exc.maybe_applied is False
    assert "TLS: the agent's certificate did not verify against the CA in" in exc.message
    assert str(pki["other"]) in exc.message and "--ca-file" in exc.message
    # the system's CAs do not know the cluster CA either
    with pytest.raises(APIError, match="did not verify against the system's CAs"):
        APIClient(agent.url, token=TOKEN).status()
    assert agent.seen == []  # the token never left the client


def test_validate_certs_false_skips_the_check(agent: FakeAgent, pki: dict[str, Path]):
    assert APIClient(agent.url, token=TOKEN, validate_certs=False).status()["node_id"] == "n1"
    client = APIClient(agent.url, token=TOKEN, validate_certs=False, ca_path=str(pki["other"]))
    assert client.members()[0]["id"] == "n1"


def test_a_ca_file_that_cannot_be_loaded_is_a_value_error(tmp_path: Path):
    with pytest.raises(ValueError, match="cannot load the CA file .*missing.pem"):
        APIClient("https://127.0.0.1:1", ca_path=str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="cannot load the CA file"):
        APIClient("https://127.0.0.1:1", ca_path=str(garbage))


def test_a_ca_directory_works_too(agent: FakeAgent, pki: dict[str, Path], tmp_path: Path):
    """``ca_path`` may be a directory of hashed certificates (``openssl rehash``)."""
    directory = tmp_path / "cas"
    directory.mkdir()
    # the file name is OpenSSL's subject hash, as `openssl x509 -hash` prints it
    digest = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(pki["ca"])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (directory / f"{digest}.0").write_bytes(pki["ca"].read_bytes())
    assert APIClient(agent.url, token=TOKEN, ca_path=str(directory)).status()["term"] == 3


# ---- the CLI ---------------------------------------------------------------------------------


def test_the_cli_takes_ca_file(
    agent: FakeAgent,
    pki: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    token_file = str(write_secret(tmp_path / "token", TOKEN))
    monkeypatch.delenv("HAFLEET_CA_FILE", raising=False)
    base = ["--api", agent.url, "--token-file", token_file]
    assert cli.main(["status", *base, "--ca-file", str(pki["ca"])]) == 0
    assert "leader n1" in capsys.readouterr().out
    assert cli.main(["kv", "put", "k", "2", *base, "--ca-file", str(pki["ca"])]) == 0
    capsys.readouterr()

    assert cli.main(["members", *base, "--ca-file", str(pki["other"])]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the agent" in err and "did not verify against the CA in" in err, err
    assert cli.main(["members", *base]) == 1  # the system's CAs
    assert "did not verify against the system's CAs" in capsys.readouterr().err
    assert cli.main(["members", *base, "--ca-file", str(tmp_path / "nope.pem")]) == 2
    assert "cannot load the CA file" in capsys.readouterr().err

    monkeypatch.setenv("HAFLEET_CA_FILE", str(pki["ca"]))
    assert cli.main(["members", *base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == "n1"
    assert [s[0] for s in agent.seen] == ["GET", "GET", "PUT", "GET"]


def test_every_client_subcommand_has_ca_file():
    parser = cli.build_parser()
    for argv in (
        ["status"],
        ["members"],
        ["leave"],
        ["kv", "get", "k"],
        ["kv", "put", "k", "v"],
        ["kv", "del", "k"],
        ["balancer", "--haproxy-socket", "s", "--backend", "b"],
    ):
        assert parser.parse_args([*argv, "--ca-file", "ca.crt"]).ca_file == "ca.crt", argv


# ---- the balancer syncer ---------------------------------------------------------------------


def _balancer(url: str, tmp_path: Path, ca_file: str | None) -> Balancer:
    opts = Options(
        haproxy_socket=str(tmp_path / "haproxy.sock"),
        backend="web",
        api_urls=[url],
        token=TOKEN.encode(),
        ca_file=ca_file,
    )
    return Balancer(opts)


def test_the_syncer_verifies_against_its_ca_file(
    agent: FakeAgent, pki: dict[str, Path], tmp_path: Path
):
    async def main() -> None:
        good = _balancer(agent.url, tmp_path, str(pki["ca"]))
        assert good.api.watch(0, 1)["index"] == 7
        assert await good.write("balancer/drained/n1", {"at": 1}) is True
        bad = _balancer(agent.url, tmp_path, str(pki["other"]))
        assert await bad.write("balancer/drained/n1", {"at": 2}) is False
        with pytest.raises(APIError, match="did not verify against the CA in"):
            bad.api.watch(0, 1)

    asyncio.run(main())
    assert [(m, p) for m, p, _ in agent.seen] == [
        ("GET", "/v1/watch?index=0&wait=1s"),
        ("PUT", "/v1/kv/balancer%2Fdrained%2Fn1"),
    ]


def test_the_syncer_refuses_a_ca_file_it_cannot_load(tmp_path: Path):
    with pytest.raises(BalancerError, match="cannot load the CA file") as caught:
        _balancer("https://127.0.0.1:1", tmp_path, str(tmp_path / "missing.pem"))
    assert caught.value.exit_code == 2


def test_the_syncer_stops_on_a_read_only_token(
    read_only_agent: FakeAgent, pki: dict[str, Path], tmp_path: Path
):
    async def main() -> None:
        bal = _balancer(read_only_agent.url, tmp_path, str(pki["ca"]))
        with pytest.raises(BalancerError, match="may only read") as caught:
            await bal.write("balancer/registered", {"at": 1})
        assert caught.value.exit_code == 2

    asyncio.run(main())


def test_the_balancer_command_reads_ca_file(
    agent: FakeAgent,
    pki: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    """``hafleet-agent balancer --ca-file`` reaches the syncer: a CA file that cannot be
    loaded stops it with exit code 2 before it looks at HAProxy."""
    monkeypatch.delenv("HAFLEET_CA_FILE", raising=False)
    token_file = str(write_secret(tmp_path / "token", TOKEN))
    argv = ["balancer", "--haproxy-socket", str(tmp_path / "s"), "--backend", "web"]
    argv += ["--api", agent.url, "--token-file", token_file]
    assert cli.main([*argv, "--ca-file", str(tmp_path / "missing.pem")]) == 2
    assert "cannot load the CA file" in capsys.readouterr().err
    monkeypatch.setenv("HAFLEET_CA_FILE", str(tmp_path / "also-missing.pem"))
    assert cli.main(argv) == 2
    assert "also-missing.pem" in capsys.readouterr().err


def test_the_syncer_says_when_no_agent_verifies(
    agent: FakeAgent, pki: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """One agent whose certificate does not verify: the watch logs why (no failover line is
    logged with a single URL) and keeps trying, the token never sent."""
    caplog.set_level(logging.WARNING, logger="hafleet.balancer")

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "no agent gave a view" in r.getMessage()]

    async def main() -> None:
        bal = _balancer(agent.url, tmp_path, str(pki["other"]))
        task = asyncio.create_task(bal.watch())
        try:
            deadline = time.monotonic() + 20
            while not said() and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.05)
        finally:
            bal.stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert said(), caplog.text
    assert "did not verify against the CA in" in said()[0]
    assert agent.seen == []
