"""The client subcommands of ``hafleet-agent``: status, members, leave, kv.

They speak the HTTP API of one agent through :mod:`hafleet_agent.apiclient`: the agent, its
token and CA come from the flags (``--api``, ``--token-file``, ``--ca-file``, ``--config``),
the environment or the local agent's own config (:mod:`.client_config`); an ``https://``
agent's certificate is verified against the CA (else the system's CAs). This module parses
the arguments and formats the answers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from typing import Any

from .apiclient import APIClient, APIError
from .client_config import DiscoveryError, discover_for
from .ids import is_control

#: The CLI's timeout for one call: a removal waits for the drain first (the agent's
#: drain_timeout_s, config.AgentConfig: 10 s by default; up to 30 s still fits).
TIMEOUT = 35.0
#: For the other members' terms in ``status``.
PEER_TIMEOUT = 1.5


class ClientError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def connect(args: argparse.Namespace, timeout: float = TIMEOUT) -> list[APIClient]:
    """Clients of the agent the flags, the environment or the local agent's config name
    (:mod:`.client_config`): the first, then the other lab nodes found beside it."""
    try:
        end = discover_for(args)
        return [
            APIClient(url, token=end.token, timeout=timeout, ca_path=end.ca_file)
            for url in [end.api, *end.alternates]
        ]
    except (DiscoveryError, ValueError) as exc:
        raise ClientError(str(exc), 2) from None


def run_client(
    args: argparse.Namespace, run: Callable[[APIClient, argparse.Namespace], int] | None = None
) -> int:
    clients = connect(args)
    if args.command_name == "leave":
        clients = clients[:1]  # it removes the agent it reaches: never another one
    for i, api in enumerate(clients):
        try:
            return (run or _run)(api, args)
        except APIError as exc:
            if exc.status is None:
                refused = not exc.sent and not exc.message.startswith("TLS")
                if refused and i + 1 < len(clients):
                    continue  # never sent: the next agent found beside it (a lab node)
                raise ClientError(
                    f"cannot reach the agent at {api.base_url}: {exc.message}"
                ) from None
            raise ClientError(str(exc)) from None
    raise AssertionError("unreachable: connect() gives at least one client")


def _run(api: APIClient, args: argparse.Namespace) -> int:
    cmd = args.command_name
    if cmd == "status":
        return _status(api, args)
    if cmd == "members":
        members = api.members()
        if args.json:
            print(json.dumps(members, indent=2, sort_keys=True))
        else:
            print(render_members(members))
        return 0
    if cmd == "leave":
        node = api.status()["node_id"]
        api.remove_member(node)
        print(f"{node} left the group; the agent stops")
        return 0
    if cmd.startswith("kv "):
        return _kv(api, args)
    raise ClientError(f"unknown command {cmd}", 2)


def _kv(api: APIClient, args: argparse.Namespace) -> int:
    op = args.command_name.split()[1]
    if op == "get":
        try:
            item = api.kv_get(args.key, stale=args.stale)
        except APIError as exc:
            if exc.status != 404:
                raise
            print(f"no key {args.key!r}", file=sys.stderr)
            return 1
        print(json_text(item["value"]))
        return 0
    if op == "put":
        item = api.kv_put(args.key, parse_value(args.value), cas=args.cas)
    else:
        item = api.kv_delete(args.key, cas=args.cas)
    print(json_text(item, sort_keys=True))
    return 0


def _not_json(text: str) -> float:
    raise ValueError(f"{text} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999
        raise ValueError(f"{text} is out of a float's range")
    return number


def parse_value(text: str) -> Any:
    """``kv put``'s VALUE: strict JSON (no NaN, Infinity, or number too large for a float,
    which Python's json takes and the agent refuses), or else the text as a string."""
    try:
        return json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except (ValueError, RecursionError):  # (also: an integer of more than 4300 digits)
        return text


def json_text(value: Any, **options: Any) -> str:
    """``value`` as JSON with its text as is (``"värde ✓"``, not ``"v\\u00e4rde \\u2713"``),
    but for what a terminal would act on rather than show (control and format characters,
    line separators: escaped as JSON escapes them) and for what stdout cannot encode (then
    all of it escaped, as ``json.dumps`` does by default)."""
    text = json.dumps(value, ensure_ascii=False, **options)
    if any(is_control(c) or "\ud800" <= c <= "\udfff" for c in text):
        text = "".join(_escaped(c) for c in text)
    try:
        text.encode(sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return json.dumps(value, **options)
    return text


def _escaped(c: str) -> str:
    """One character of a JSON text as is, or as its escape when it is a control or format
    character or a lone surrogate (outside strings a JSON text is plain ASCII)."""
    if not (is_control(c) or "\ud800" <= c <= "\udfff"):
        return c
    return json.dumps(c)[1:-1]  # (ensure_ascii: a surrogate pair beyond the BMP)


def _status(api: APIClient, args: argparse.Namespace) -> int:
    st = api.status()
    members = api.members()
    rows = []
    for m in members:
        term: Any = "?"
        if m["id"] == st["node_id"]:
            term = st["term"]
        elif m.get("api_addr"):
            try:
                term = api.for_api_addr(m["api_addr"], timeout=PEER_TIMEOUT).status()["term"]
            except APIError:
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
    cluster_id = f" ({st['cluster_id']})" if st.get("cluster_id") else ""  # (none yet: fresh)
    print(
        f"cluster {st['cluster']}{cluster_id}  leader {st['leader_id'] or '-'}  "
        f"term {st['term']}  commit {st['commit_index']}"
    )
    print(render_members(rows, with_term=True))
    if not st["leader_id"]:
        # (the health, load and weight columns are the replicated state, which only a leader
        # writes: a quorum lost showed the members it lost as healthy, with nothing said)
        print(
            "\nno leader: HEALTHY, the load and the weights are as the last leader wrote them and"
            " may be stale; TERM shows who answers now"
        )
    if st.get("balancers"):  # (an older agent's status has no "balancers")
        print()
        print(render_balancers(st["balancers"]))
    return 0


def render_balancers(balancers: list[dict[str, Any]]) -> str:
    """The BALANCERS section of ``status``: each registered syncer, when it was last heard
    of, and whether it holds the virtual address (``--vip``; ``-`` when it was given none)."""
    rows = [["BALANCER", "HOST", "BACKEND", "LAST-SEEN", "VIP", "VIP-HELD"]]
    for b in balancers:
        age = b.get("last_seen_s")
        seen = "-" if age is None else f"{float(age):.1f}s ago"
        if age is not None and not b.get("fresh"):
            seen += " (stale)"
        held = {True: "yes", False: "no"}.get(b.get("vip_held"), "-")
        rows.append(
            [
                str(b.get("id") or "?"),
                str(b.get("host") or "-"),
                str(b.get("backend") or "-"),
                seen,
                str(b.get("vip") or "-"),
                held,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


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
            "SERVICE-CHECK",
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
            ("yes" if m.get("healthy") else "NO")
            + (" (unreachable)" if m.get("reachable") is False else "")
            + (" (draining)" if m.get("draining") else "")
            + (" (maintenance)" if m.get("maintenance") else ""),
            # the agent's health apart from its service's (an older agent shows neither)
            {True: "ok", False: "FAILING"}.get(m.get("service_healthy"), "-"),
            str(m.get("raft_addr") or "-"),
            str(m.get("service_addr") or "-"),
        ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
