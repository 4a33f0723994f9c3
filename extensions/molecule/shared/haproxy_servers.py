# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ask HAProxy's admin socket directly (not through the roles' helpers) for
``show servers state`` and print the servers as one JSON list.

    haproxy_servers.py SOCKET [BACKEND]
"""

from __future__ import annotations

import json
import socket
import sys


def ask(path: str, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def main() -> int:
    path = sys.argv[1]
    backend = sys.argv[2] if len(sys.argv) > 2 else None
    text = ask(path, "show servers state" + (f" {backend}" if backend else ""))
    lines = [line for line in text.splitlines() if line.strip()]
    header = next(line for line in lines if line.startswith("#")).lstrip("# ").split()
    servers = []
    for line in lines:
        fields = line.split()
        # Skip the format version line ("1") and the header.
        if line.startswith("#") or len(fields) < len(header) // 2:
            continue
        row = dict(zip(header, fields, strict=False))
        servers.append(
            {
                "backend": row["be_name"],
                "name": row["srv_name"],
                "addr": row["srv_addr"],
                "port": int(row["srv_port"]),
                "op_state": int(row["srv_op_state"]),
                "admin_state": int(row["srv_admin_state"]),
                "weight": int(row["srv_uweight"]),
            }
        )
    print(json.dumps(servers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
