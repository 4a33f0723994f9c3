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

from .ids import NODE_URI_PREFIX, valid_member_id

__all__ = [
    "TLSConfig",
    "TLSError",
    "peer_node_id",
]

_NO_CHECK_TIME = 0x200000
"""OpenSSL's ``X509_V_FLAG_NO_CHECK_TIME`` (1.1.0 on): the start-up check reads the dates
itself, so that an expired certificate is refused with them in the message."""


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

        def context(purpose: ssl.Purpose, *, own: bool, verify: bool) -> ssl.SSLContext:
            server = purpose is ssl.Purpose.CLIENT_AUTH
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if own:
                try:
                    ctx.load_cert_chain(cert_file, key_file)
                except ssl.SSLError as exc:
                    if exc.reason == "KEY_VALUES_MISMATCH":
                        raise TLSError(
                            f"TLS key {key_file} does not go with certificate {cert_file} ({exc})"
                        ) from None
                    raise TLSError(f"cannot read the TLS certificate or key: {exc}") from None
            if verify:
                try:
                    ctx.load_verify_locations(cafile=ca_file)
                except ssl.SSLError as exc:
                    raise TLSError(f"cannot read the TLS CA file {ca_file}: {exc}") from None
                ctx.verify_mode = ssl.CERT_REQUIRED
            if not server:
                ctx.check_hostname = True
            return ctx

        try:
            peer_server = context(ssl.Purpose.CLIENT_AUTH, own=True, verify=True)
            peer_client = context(ssl.Purpose.SERVER_AUTH, own=True, verify=True)
            api_server = context(ssl.Purpose.CLIENT_AUTH, own=True, verify=False)
            api_client = context(ssl.Purpose.SERVER_AUTH, own=False, verify=True)
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot use the TLS files: {exc}") from None
        seen = _as_peers_see_it(api_server, ca_file, cert_file)
        node_id = peer_node_id(seen)
        if node_id is None:
            raise TLSError(
                f"TLS certificate {cert_file} names no node id (a subjectAltName URI "
                f"{NODE_URI_PREFIX}ID and the common name ID; make it with hafleet-agent ca issue)"
            )
        now = dt.datetime.now(dt.UTC)
        not_after, not_before = _cert_time(seen, "notAfter"), _cert_time(seen, "notBefore")
        if not_after <= now:
            raise TLSError(
                f"TLS certificate {cert_file} expired on {not_after:%Y-%m-%d %H:%M} "
                "UTC: peers would refuse it; issue a new one (hafleet-agent ca issue)"
            )
        if not_before > now:
            raise TLSError(
                f"TLS certificate {cert_file} is not valid before "
                f"{not_before:%Y-%m-%d %H:%M} UTC (is the clock right?)"
            )
        return cls(
            ca_file,
            cert_file,
            key_file,
            node_id,
            peer_server=peer_server,
            peer_client=peer_client,
            api_server=api_server,
            api_client=api_client,
            names=tuple(seen.get("subjectAltName", ())),
        )

    names: tuple[tuple[str, str], ...] = ()
    """Our certificate's subjectAltNames as ``getpeercert()`` gives them (``("DNS", name)``,
    ``("IP Address", addr)``, ``("URI", uri)``)."""

    def covers_host(self, host: str) -> bool:
        """Whether our certificate names ``host`` (an IP address or DNS name) as a
        subjectAltName: the address peers dial must be there, or their check fails."""
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            wanted = host.lower().rstrip(".")
            return any(k == "DNS" and v.lower().rstrip(".") == wanted for k, v in self.names)
        return any(k == "IP Address" and _ip(v) == ip for k, v in self.names)


def _as_peers_see_it(server: ssl.SSLContext, ca_file: str, cert_file: str) -> dict[str, Any]:
    """Our certificate as a peer sees it: a TLS handshake in memory between ``server`` (our
    API's context: our certificate and key, no client certificate asked) and a client that
    trusts ``ca_file`` (OpenSSL checks the signatures as every peer will; the dates are left
    to the caller). Returns the certificate's fields (``getpeercert()``'s form); TLSError
    when a peer would refuse it.

    Python's ``ssl`` alone: an agent with TLS does not load the ``cryptography`` package,
    ~10 MiB of its resident memory (only ``hafleet-agent ca`` needs it)."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # (the addresses are checked by covers_host)
    client.verify_flags |= _NO_CHECK_TIME
    client.load_verify_locations(cafile=ca_file)  # (read already by the peer contexts)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    c_side = client.wrap_bio(to_client, to_server)
    s_side = server.wrap_bio(to_server, to_client, server_side=True)
    try:
        for _ in range(8):  # a TLS 1.3 handshake takes two rounds, 1.2 three
            done = 0
            for side in (c_side, s_side):
                try:
                    side.do_handshake()
                    done += 1
                except ssl.SSLWantReadError:
                    pass
            if done == 2:
                break
        else:
            raise TLSError(f"cannot use the TLS files: no handshake with {cert_file}")
    except ssl.SSLCertVerificationError as exc:
        raise TLSError(
            f"TLS certificate {cert_file} is not signed by the CA in {ca_file} "
            f"({exc.verify_message})"
        ) from None
    except ssl.SSLError as exc:
        raise TLSError(f"cannot use the TLS files: {exc}") from None
    return c_side.getpeercert() or {}


def _cert_time(fields: dict[str, Any], name: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(fields[name]), dt.UTC)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())  # (older versions end IPv6 ones in "\n")
    except ValueError:
        return None


def peer_node_id(peercert: Any) -> str | None:
    """The node id of a verified peer's certificate, from ``SSLObject.getpeercert()`` (the
    dict form; empty or None when the peer showed none): its one ``hafleet://node/ID``
    URI, which the common name (when there is one) must repeat; None when it names none,
    or two."""
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
