"""``hafleet-agent ca init`` and ``ca issue``: the cluster CA and the agents' certificates."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hafleet_agent import ca
from hafleet_agent.cli import main


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _cert(p: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(p.read_bytes())


def test_init_makes_a_ca_with_a_private_key(tmp_path: Path, capsys) -> None:
    d = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(d)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert _mode(d / "ca.key") == 0o600
    cert = _cert(d / "ca.crt")
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # self-signed
    assert not [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


def test_init_refuses_to_overwrite_a_ca(tmp_path: Path, capsys) -> None:
    assert main(["ca", "init", "--dir", str(tmp_path)]) == 0
    before = (tmp_path / "ca.key").read_bytes(), (tmp_path / "ca.crt").read_bytes()
    capsys.readouterr()
    assert main(["ca", "init", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "refusing to overwrite a cluster CA" in err and "ca.crt" in err
    assert ((tmp_path / "ca.key").read_bytes(), (tmp_path / "ca.crt").read_bytes()) == before
    # a key alone (a half-made CA) is refused too
    (tmp_path / "ca.crt").unlink()
    assert main(["ca", "init", "--dir", str(tmp_path)]) == 1
    assert "ca.key exists" in capsys.readouterr().err


def test_issue_binds_the_node_id_and_addresses(tmp_path: Path, capsys) -> None:
    assert main(["ca", "init", "--dir", str(tmp_path)]) == 0
    rc = main(
        [
            "ca",
            "issue",
            "--dir",
            str(tmp_path),
            "--node-id",
            "n1",
            "--address",
            "10.0.0.5",
            "--address",
            "fd00::5",
            "--address",
            "node1.example.org",
        ]
    )
    assert rc == 0
    assert "n1.crt" in capsys.readouterr().out
    assert _mode(tmp_path / "n1.key") == 0o600
    ca_cert, cert = _cert(tmp_path / "ca.crt"), _cert(tmp_path / "n1.crt")
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["hafleet://node/n1"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("fd00::5"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["node1.example.org"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 800 <= days <= 830


def test_issue_again_replaces_the_pair(tmp_path: Path, capsys) -> None:
    ca.init_ca(tmp_path)
    first = ca.issue(tmp_path, "n1", ["127.0.0.1"])
    assert not first.replaced
    old = _cert(first.cert_path).serial_number
    second = ca.issue(tmp_path, "n1", ["127.0.0.1"], days=30)
    assert second.replaced
    assert _cert(second.cert_path).serial_number != old
    assert _mode(second.key_path) == 0o600


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--node-id=-bad", "--address", "127.0.0.1"], "member id is 1-63"),
        (["--node-id", "a/b", "--address", "127.0.0.1"], "member id is 1-63"),
        (["--node-id", "ca", "--address", "127.0.0.1"], "CA's own files"),
        (["--node-id", "n1", "--address", "not an address!"], "neither an IP address"),
    ],
)
def test_issue_refuses_bad_input(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    ca.init_ca(tmp_path)
    capsys.readouterr()
    assert main(["ca", "issue", "--dir", str(tmp_path), *argv]) == 1
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]


@pytest.mark.parametrize("days", ["3651", "99999999"])  # (the second overflowed the date)
def test_a_certificate_ends_with_its_ca_at_the_latest(tmp_path: Path, capsys, days: str) -> None:
    ca.init_ca(tmp_path)
    argv = ["ca", "issue", "--dir", str(tmp_path), "--node-id", "n1", "--address", "::1"]
    assert main([*argv, "--days", days]) == 0
    out = capsys.readouterr()
    assert "wrote" in out.out and "when the CA expires" in out.err
    end = _cert(tmp_path / "n1.crt").not_valid_after_utc
    assert end == _cert(tmp_path / "ca.crt").not_valid_after_utc
    assert main([*argv, "--days", "30"]) == 0
    assert "CA expires" not in capsys.readouterr().err


def test_an_expired_ca_issues_nothing() -> None:
    import datetime as dt

    cert, key = ca.make_ca(days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    with pytest.raises(ca.CAError, match="the CA expired on .*make a new CA"):
        ca.make_node_cert(cert, key, "n1", ["::1"])


def test_issue_without_a_ca_says_how_to_make_one(tmp_path: Path, capsys) -> None:
    rc = main(["ca", "issue", "--dir", str(tmp_path), "--node-id", "n1", "--address", "::1"])
    assert rc == 1
    assert "hafleet-agent ca init --dir" in capsys.readouterr().err


def test_issue_refuses_a_key_that_is_not_the_cas(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ca.init_ca(a)
    ca.init_ca(b)
    (a / "ca.key").write_bytes((b / "ca.key").read_bytes())
    with pytest.raises(ca.CAError, match="is not the key of"):
        ca.issue(a, "n1", ["127.0.0.1"])


def test_two_cas_differ(tmp_path: Path) -> None:
    ca.init_ca(tmp_path / "a")
    ca.init_ca(tmp_path / "b")
    a, b = _cert(tmp_path / "a" / "ca.crt"), _cert(tmp_path / "b" / "ca.crt")
    assert a.subject != b.subject
    assert a.public_key() != b.public_key()
