"""The cluster's certificate authority: ``hafleet-agent ca init`` and ``ca issue``.

A cluster CA is a self-signed ECDSA P-256 certificate and its key (``DIR/ca.crt``,
``DIR/ca.key``, mode 0600). Each agent gets a certificate it signs (``DIR/ID.crt``,
``DIR/ID.key``, mode 0600) that binds the node id twice: the subject's common name is the
id, and a URI subjectAltName ``hafleet://node/ID`` names it (that URI is what the agents
read, :func:`hafleet_agent.tls.peer_node_id`). The node's addresses are IP or DNS
subjectAltNames, so HTTPS clients can check the host they dial; the extended key usage is
serverAuth and clientAuth, since every agent both serves and dials (mutual TLS).

All X.509 and key work is the ``cryptography`` library's; nothing here is hand-rolled.
Keys are written unencrypted (the agents read them at start without a passphrase): the
file mode is what protects them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .ids import NODE_URI_PREFIX, member_id_error

CA_CERT = "ca.crt"
CA_KEY = "ca.key"

CA_DAYS = 3650
NODE_DAYS = 825
CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates are valid from this long before they were made (clocks disagree a little)."""

_DNS_RE = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


class CAError(Exception):
    """A ``ca`` command cannot do what was asked; the message says why and what to do."""


@dataclass(frozen=True)
class Issued:
    cert_path: Path
    key_path: Path
    replaced: bool
    expires: dt.datetime  # the certificate's end
    capped: bool  # ``days`` went past the CA's end: the certificate ends with it


def node_uri(node_id: str) -> str:
    return NODE_URI_PREFIX + node_id


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(
    common_name: str | None = None,
    *,
    days: int = CA_DAYS,
    now: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed CA certificate and its key (not written anywhere)."""
    key = new_key()
    now = now or dt.datetime.now(dt.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hafleet"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, common_name or f"hafleet cluster CA {secrets.token_hex(4)}"
            ),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def parse_address(text: str) -> x509.GeneralName:
    """An ``--address``: an IP address (v4 or v6) or a DNS name, as a subjectAltName."""
    text = text.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    if _DNS_RE.fullmatch(text) is None:
        raise CAError(f"--address {text!r} is neither an IP address nor a DNS name")
    return x509.DNSName(text.rstrip(".").lower())


def make_node_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    node_id: str,
    addresses: list[str],
    *,
    days: int = NODE_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for ``node_id`` signed by the CA, and its new key (not written).

    ``not_before``/``not_after`` override the validity (tests make expired certificates)."""
    error = member_id_error(node_id, "node id")
    if error is not None:
        raise CAError(error)
    if not addresses:
        raise CAError("give at least one --address (the node's IP address or DNS name)")
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(node_uri(node_id))]
    for a in addresses:
        san = parse_address(a)
        if san not in names:
            names.append(san)
    now = dt.datetime.now(dt.UTC)
    ca_end = ca_cert.not_valid_after_utc
    left = (ca_end - now).days
    if not_after is None and left < 1:
        raise CAError(
            f"the CA expired on {ca_end:%Y-%m-%d %H:%M} UTC (or expires within a day): peers "
            "refuse what it signs; make a new CA (hafleet-agent ca init) and issue again"
        )
    key = key or new_key()
    start = not_before or now - CLOCK_SKEW
    # Never past the CA's own end (peers refuse a certificate once its CA has expired); this
    # also keeps a huge ``days`` from overflowing the date. ``issue`` says when it cut.
    end = not_after or (ca_end if days > left else now + dt.timedelta(days=days))
    ca_public = ca_key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hafleet"),
                    x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# ---- files ---------------------------------------------------------------------------------


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed over it), created
    with ``mode`` from the start, so a key is never readable by others, not even briefly."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def init_ca(directory: str | Path, *, days: int = CA_DAYS) -> tuple[Path, Path]:
    """Make ``DIR/ca.crt`` and ``DIR/ca.key`` (0600); refuse when either exists."""
    d = Path(directory)
    cert_path, key_path = d / CA_CERT, d / CA_KEY
    for p in (cert_path, key_path):
        if p.exists():
            raise CAError(
                f"{p} exists: refusing to overwrite a cluster CA (every certificate it "
                "issued would stop being trusted). Remove it first if that is really meant."
            )
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CAError(f"cannot create {d}: {exc.strerror}") from None
    cert, key = make_ca(days=days)
    try:
        write_file(key_path, key_pem(key), 0o600)
        write_file(cert_path, cert_pem(cert), 0o644)
    except OSError as exc:
        raise CAError(f"cannot write the CA into {d}: {exc.strerror}") from None
    return cert_path, key_path


def load_ca(directory: str | Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    d = Path(directory)
    try:
        cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CAError(
            f"{exc.filename} does not exist: make the CA first (hafleet-agent ca init --dir {d})"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise CAError(f"cannot read the CA in {d}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{d / CA_KEY} is not an ECDSA key")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise CAError(f"{d / CA_KEY} is not the key of {d / CA_CERT}")
    return cert, key


def issue(
    directory: str | Path, node_id: str, addresses: list[str], *, days: int = NODE_DAYS
) -> Issued:
    """Make ``DIR/ID.crt`` and ``DIR/ID.key`` (0600) signed by the CA in ``DIR``, valid
    ``days`` or until the CA's own end if that comes first (``capped``). An existing pair is
    replaced (a rotation); the old certificate stays valid until it expires."""
    error = member_id_error(node_id, "node id")
    if error is not None:
        raise CAError(error)
    if node_id in ("ca",):
        raise CAError("node id 'ca' would overwrite the CA's own files; pick another")
    d = Path(directory)
    ca_cert, ca_key = load_ca(d)
    cert, key = make_node_cert(ca_cert, ca_key, node_id, addresses, days=days)
    cert_path, key_path = d / f"{node_id}.crt", d / f"{node_id}.key"
    replaced = cert_path.exists() or key_path.exists()
    try:
        write_file(key_path, key_pem(key), 0o600)
        write_file(cert_path, cert_pem(cert), 0o644)
    except OSError as exc:
        raise CAError(f"cannot write into {d}: {exc.strerror}") from None
    expires = cert.not_valid_after_utc
    return Issued(cert_path, key_path, replaced, expires, expires == ca_cert.not_valid_after_utc)
