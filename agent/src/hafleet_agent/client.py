"""The client subcommands of ``hafleet-agent``: status, members, leave, kv.

They speak the HTTP API of one agent (``--api``, default ``http://127.0.0.1:7480``) with the
token from ``--token-file`` (or the ``HAFLEET_TOKEN_FILE`` environment variable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .config import ConfigError, read_secret


class ClientError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Api:
    def __init__(self, base: str, token: bytes | None, timeout: float = 35.0) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(
        self, method: str, path: str, body: Any = None, ok404: bool = False
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token.decode())
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"null")
            except ValueError:
                payload = None
            if exc.code == 404 and ok404:
                return 404, payload
            msg = payload.get("error") if isinstance(payload, dict) else exc.reason
            raise ClientError(f"{method} {path}: {exc.code} {msg}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach the agent at {self.base}: {reason}") from None


def _token(args: argparse.Namespace) -> bytes:
    path = args.token_file or os.environ.get("HAFLEET_TOKEN_FILE")
    if not path:
        raise ClientError("give the API token with --token-file FILE (or HAFLEET_TOKEN_FILE)", 2)
    try:
        return read_secret(path, "token")
    except ConfigError as exc:
        raise ClientError(str(exc), 2) from None


def run_client(args: argparse.Namespace) -> int:
    api = Api(args.api, _token(args))
    cmd = args.command_name
    if cmd == "status":
        return _status(api, args)
    if cmd == "members":
        _, members = api.call("GET", "/v1/members")
        if args.json:
            print(json.dumps(members, indent=2, sort_keys=True))
        else:
            print(render_members(members))
        return 0
    if cmd == "leave":
        _, st = api.call("GET", "/v1/status")
        node = st["node_id"]
        api.call("DELETE", f"/v1/members/{urllib.parse.quote(node, safe='')}")
        print(f"{node} left the group; the agent stops")
        return 0
    if cmd.startswith("kv "):
        return _kv(api, args)
    raise ClientError(f"unknown command {cmd}", 2)


def _kv(api: Api, args: argparse.Namespace) -> int:
    key = urllib.parse.quote(args.key, safe="/")
    op = args.command_name.split()[1]
    if op == "get":
        status, item = api.call(
            "GET", f"/v1/kv/{key}{'?stale=1' if args.stale else ''}", ok404=True
        )
        if status == 404:
            print(f"no key {args.key!r}", file=sys.stderr)
            return 1
        print(json.dumps(item["value"]))
        return 0
    query = f"?cas={args.cas}" if args.cas is not None else ""
    if op == "put":
        try:
            value = json.loads(args.value)
        except ValueError:
            value = args.value
        _, item = api.call("PUT", f"/v1/kv/{key}{query}", {"value": value})
    else:
        _, item = api.call("DELETE", f"/v1/kv/{key}{query}")
    print(json.dumps(item, sort_keys=True))
    return 0


def _status(api: Api, args: argparse.Namespace) -> int:
    _, st = api.call("GET", "/v1/status")
    _, members = api.call("GET", "/v1/members")
    rows = []
    for m in members:
        term: Any = "?"
        if m["id"] == st["node_id"]:
            term = st["term"]
        elif m.get("api_addr"):
            try:
                _, other = Api("http://" + m["api_addr"], api.token, timeout=1.5).call(
                    "GET", "/v1/status"
                )
                term = other["term"]
            except ClientError:
                term = "down"
        rows.append({**m, "term": term})
    if args.json:
        print(
            json.dumps(
                {"status": {k: v for k, v in st.items() if k != "members"}, "members": rows},
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    print(
        f"cluster {st['cluster']} ({st['cluster_id']})  leader {st['leader_id'] or '-'}  "
        f"term {st['term']}  commit {st['commit_index']}"
    )
    print(render_members(rows, with_term=True))
    return 0


def _fmt_pct(v: Any) -> str:
    return "-" if v is None else f"{float(v):.0f}%"


def render_members(members: list[dict[str, Any]], with_term: bool = False) -> str:
    head = (
        ["NODE", "ROLE"]
        + (["TERM"] if with_term else [])
        + [
            "CPU",
            "MEM",
            "LOAD",
            "WEIGHT",
            "HEALTHY",
            "RAFT",
            "SERVICE",
        ]
    )
    rows = [head]
    for m in members:
        mt = m.get("metrics") or {}
        load = mt.get("load1")
        cores = mt.get("cpu_count")
        row = [m["id"], str(m.get("role") or "-")]
        if with_term:
            row.append(str(m.get("term", "?")))
        row += [
            _fmt_pct(mt.get("cpu_percent")) + (f"/{cores}c" if cores else ""),
            _fmt_pct(mt.get("mem_percent")),
            "-" if load is None else f"{float(load):.2f}",
            "-" if m.get("weight") is None else str(m["weight"]),
            ("yes" if m.get("healthy") else "NO") + (" (draining)" if m.get("draining") else ""),
            str(m.get("raft_addr") or "-"),
            str(m.get("service_addr") or "-"),
        ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
