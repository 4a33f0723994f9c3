"""Does a node's certificate on the controller need issuing? (the agent role's tls.yml)

    python node_cert_state.py --dir DIR --node-id ID --address ADDR [...] --renew-days N

Reads DIR/ID.crt and DIR/ID.key (as ``hafleet-agent ca issue`` wrote them) and prints one
JSON object: ``{"issue": true|false, "reason": "..."}``. A certificate is issued again when
it or its key is missing or unreadable, the key is not the certificate's, the CA of DIR did not
sign it, it names another node id, its addresses are not exactly the ones given, or it
expires within N days. ``--nodes JSON`` (``{"ID": ["ADDR", ...], ...}``) asks about many
nodes in one run and prints ``{"ID": {"issue": ..., "reason": ...}, ...}``. Run with the
controller's Python and ``PYTHONPATH`` at the agent's
source (``hafleet_agent.ca`` parses the addresses as ``ca issue`` does); it needs only
``cryptography``, which ansible-core depends on. Changes nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hafleet_agent import ca


def state(directory: Path, node_id: str, addresses: list, renew_days: int) -> str:
    """Why the certificate must be issued, or "" when it is good as it is."""
    cert_path = directory / f"{node_id}.crt"
    key_path = directory / f"{node_id}.key"
    if not cert_path.exists() or not key_path.exists():
        return "no certificate yet"
    try:
        ca_cert = x509.load_pem_x509_certificate((directory / ca.CA_CERT).read_bytes())
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return f"unreadable: {exc}"
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        return "the key is not the certificate's"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception as exc:  # InvalidSignature, ValueError (another issuer), TypeError
        return f"not signed by the cluster CA ({type(exc).__name__})"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if uris != [ca.node_uri(node_id)]:
        return f"it names another node id ({', '.join(uris)})"
    have = {n for n in sans if not isinstance(n, x509.UniformResourceIdentifier)}
    want = {ca.parse_address(a) for a in addresses}
    if have != want:
        return "its addresses changed"
    end = getattr(cert, "not_valid_after_utc", None)  # cryptography 42+
    if end is None:
        end = cert.not_valid_after.replace(tzinfo=dt.UTC)
    left = end - dt.datetime.now(dt.UTC)
    if left < dt.timedelta(days=renew_days):
        return f"it expires in {max(left.days, 0)} day(s)"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--node-id")
    parser.add_argument("--address", action="append")
    parser.add_argument("--nodes", type=json.loads, help='{"ID": ["ADDR", ...], ...}')
    parser.add_argument("--renew-days", type=int, default=30)
    args = parser.parse_args()
    if args.nodes is not None:
        answers = {}
        for node_id, addresses in args.nodes.items():
            try:
                reason = state(args.dir, node_id, addresses, args.renew_days)
            except ca.CAError as exc:
                answers[node_id] = {"issue": False, "error": str(exc)}
                continue
            answers[node_id] = {"issue": bool(reason), "reason": reason or "good"}
        print(json.dumps(answers))
        return 1 if any("error" in a for a in answers.values()) else 0
    if not args.node_id or not args.address:
        parser.error("give --node-id and --address, or --nodes")
    try:
        reason = state(args.dir, args.node_id, args.address, args.renew_days)
    except ca.CAError as exc:
        print(json.dumps({"issue": False, "error": str(exc)}))
        return 1
    print(json.dumps({"issue": bool(reason), "reason": reason or "good"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
