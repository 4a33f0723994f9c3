"""TLS for the agent: the SSL contexts of the Raft port (mutual TLS) and of the HTTPS API,
and the node id a peer's certificate names.

Given ``--tls-ca-file``, ``--tls-cert-file`` and ``--tls-key-file`` (all three or none), an
agent

- speaks mutual TLS on its Raft port: each side presents its certificate and checks the
  other's against the cluster CA; the dialling side also checks that the address it dialled
  is in the certificate (IP or DNS subjectAltName, as ``hafleet-agent ca issue --address``
  writes it). The node id a certificate names (:func:`peer_node_id`) is the only id its
  holder may speak as: the transport refuses a hello naming another
  (``transport.py``), and the node drops frames naming another sender (``node/inbox.py``).
  The HMAC handshake of the cluster key still runs inside the TLS channel: a certificate
  alone does not make a cluster member, nor does the key alone.
- serves its API over HTTPS with the same certificate (clients check it against the CA;
  they present none), and forwards writes to the leader over HTTPS checking the leader's
  certificate against the CA.

TLS 1.2 is the least version taken; Python's ``ssl`` (OpenSSL) does the work.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import stat
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from .ca import NODE_URI_PREFIX
from .ids import valid_member_id

__all__ = [
    "TLSConfig",
    "TLSError",
    "cert_node_id",
    "peer_node_id",
]


class TLSError(ValueError):
    """The TLS files cannot be used: the message says why and what to do."""


@dataclass(frozen=True)
class TLSConfig:
    """The three files of ``--tls-*`` and the SSL contexts made of them (once, at start)."""

    ca_file: str
    cert_file: str
    key_file: str
    node_id: str
    """The node id this agent's own certificate names."""
    peer_server: ssl.SSLContext
    """The Raft listener's side of mutual TLS: a client certificate of the CA is required."""
    peer_client: ssl.SSLContext
    """The dialling side of mutual TLS: presents our certificate, checks the peer's and its
    address."""
    api_server: ssl.SSLContext
    """The HTTPS API: our certificate; clients present none (the token authenticates them)."""
    api_client: ssl.SSLContext
    """Forwarding to the leader's API: checks its certificate and address against the CA."""

    @classmethod
    def load(cls, ca_file: str, cert_file: str, key_file: str) -> TLSConfig:
        """Read and check the three files and make the contexts; TLSError when they do not
        fit (missing, unreadable, a key readable by others, a key that is not the
        certificate's, a certificate not of the CA, expired or not yet valid, or one that
        names no node id)."""
        for what, path in (("CA", ca_file), ("certificate", cert_file), ("key", key_file)):
            if not path:
                raise TLSError(f"no TLS {what} file given")
            try:
                st = os.stat(path)
            except OSError as exc:
                raise TLSError(f"TLS {what} file {path}: {exc.strerror}") from None
            if not stat.S_ISREG(st.st_mode):
                raise TLSError(f"TLS {what} file {path} is not a regular file")
        mode = stat.S_IMODE(os.stat(key_file).st_mode)
        if mode & 0o077:
            raise TLSError(
                f"TLS key file {key_file} has mode {mode:04o}; it must be 0600 "
                f"(chmod 600 {key_file})"
            )
        try:
            with open(cert_file, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
            with open(ca_file, "rb") as f:
                ca_certs = x509.load_pem_x509_certificates(f.read())
        except (OSError, ValueError) as exc:
            raise TLSError(f"cannot read the TLS certificate or CA: {exc}") from None
        node_id = cert_node_id(cert)
        if node_id is None:
            raise TLSError(
                f"TLS certificate {cert_file} names no node id (a subjectAltName URI "
                f"{NODE_URI_PREFIX}ID and the common name ID; make it with hafleet-agent ca issue)"
            )
        if not any(_issued_by(cert, c) for c in ca_certs):
            raise TLSError(f"TLS certificate {cert_file} is not signed by the CA in {ca_file}")
        now = dt.datetime.now(dt.UTC)
        if cert.not_valid_after_utc <= now:
            raise TLSError(
                f"TLS certificate {cert_file} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} "
                "UTC: peers would refuse it; issue a new one (hafleet-agent ca issue)"
            )
        if cert.not_valid_before_utc > now:
            raise TLSError(
                f"TLS certificate {cert_file} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is the clock right?)"
            )

        def context(purpose: ssl.Purpose, *, own: bool, verify: bool) -> ssl.SSLContext:
            server = purpose is ssl.Purpose.CLIENT_AUTH
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if own:
                try:
                    ctx.load_cert_chain(cert_file, key_file)
                except ssl.SSLError as exc:
                    raise TLSError(
                        f"TLS key {key_file} does not go with certificate {cert_file} ({exc})"
                    ) from None
            if verify:
                ctx.load_verify_locations(cafile=ca_file)
                ctx.verify_mode = ssl.CERT_REQUIRED
            if not server:
                ctx.check_hostname = True
            return ctx

        try:
            return cls(
                ca_file,
                cert_file,
                key_file,
                node_id,
                peer_server=context(ssl.Purpose.CLIENT_AUTH, own=True, verify=True),
                peer_client=context(ssl.Purpose.SERVER_AUTH, own=True, verify=True),
                api_server=context(ssl.Purpose.CLIENT_AUTH, own=True, verify=False),
                api_client=context(ssl.Purpose.SERVER_AUTH, own=False, verify=True),
            )
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot use the TLS files: {exc}") from None

    def covers_host(self, host: str) -> bool:
        """Whether our certificate names ``host`` (an IP address or DNS name) as a
        subjectAltName: the address peers dial must be there, or their check fails."""
        with open(self.cert_file, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        return host_in_cert(cert, host)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # another issuer, another key type, a bad signature
        return False
    return True


def host_in_cert(cert: x509.Certificate, host: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.lower().rstrip(".") in {
            d.lower() for d in san.get_values_for_type(x509.DNSName)
        }
    return ip in san.get_values_for_type(x509.IPAddress)


def cert_node_id(cert: x509.Certificate) -> str | None:
    """The node id an X.509 certificate names: its one ``hafleet://node/ID`` URI, which the
    common name (when there is one) must repeat; None when it names none, or two."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return _node_id(uris, cns)


def peer_node_id(peercert: Any) -> str | None:
    """The node id of a verified peer's certificate, from ``SSLObject.getpeercert()`` (the
    dict form; empty or None when the peer showed none): as :func:`cert_node_id`."""
    if not isinstance(peercert, dict):
        return None
    uris = [v for k, v in peercert.get("subjectAltName", ()) if k == "URI"]
    cns = [v for rdn in peercert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return _node_id(uris, cns)


def _node_id(uris: list[str], cns: list[str]) -> str | None:
    ids = [u[len(NODE_URI_PREFIX) :] for u in uris if u.startswith(NODE_URI_PREFIX)]
    if len(ids) != 1 or not valid_member_id(ids[0]):
        return None
    if cns and cns != [ids[0]]:
        return None
    return ids[0]
