"""The operator's verbs of ``hafleet-agent`` on another member (docs/agent.md):

- ``maintenance on|off ID [--reason TEXT] [--force]``: take a member out of rotation (weight 0,
  drained from every HAProxy, still a voter) and back (``PUT``/``DELETE
  /v1/members/{id}/maintenance``); ``on`` is refused when no other member would stay in
  service, unless ``--force``;
- ``transfer-leadership [--to ID]``: hand leadership to a voter (the most caught-up one when
  no ``--to``; ``POST /v1/leadership/transfer``);
- ``remove-member ID [--drain-timeout S]``: drain a member, then remove it from the group
  (``DELETE /v1/members/{id}``; a leader hands over first; the removed agent stops).

They take the client options of every client subcommand (``--api``, ``--token-file``,
``--ca-file``, ``--config``) and find the agent as they do (:mod:`.client_config`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .apiclient import APIClient, member_id_error
from .cli_types import non_negative_int

ClientOptions = Callable[[argparse.ArgumentParser], None]


def _member_id(value: str) -> str:
    error = member_id_error(value, "ID")
    if error is not None:
        raise argparse.ArgumentTypeError(error)
    return value


def add_ops(commands: argparse._SubParsersAction, client_options: ClientOptions) -> None:
    """Add ``maintenance``, ``transfer-leadership`` and ``remove-member``."""
    maint = commands.add_parser(
        "maintenance",
        help="take a member out of rotation (weight 0, drained; still a voter) or back",
        description="Take a member out of rotation (weight 0, drained from every HAProxy, "
        "still a voting member of the group) and back in.",
    )
    ops = maint.add_subparsers(dest="maintenance_command", metavar="on|off", required=True)
    for name, text in (
        ("on", "put member ID in maintenance"),
        ("off", "end member ID's maintenance: back in rotation"),
    ):
        sub = ops.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=_handle, command_name=f"maintenance {name}")
        sub.add_argument("id", metavar="ID", type=_member_id, help="the member's node id")
        if name == "on":
            sub.add_argument("--reason", metavar="TEXT", help="why (shown by the API)")
            sub.add_argument(
                "--force",
                action="store_true",
                help="even when no other member would stay in service (HAProxy would then "
                "answer 503 to every request); without it the agent refuses (409)",
            )
        client_options(sub)

    text = "hand leadership over to another voter (the most caught-up one without --to)"
    transfer = commands.add_parser("transfer-leadership", help=text, description=text)
    transfer.set_defaults(handler=_handle, command_name="transfer-leadership")
    transfer.add_argument("--to", metavar="ID", type=_member_id, help="the voter to lead")
    client_options(transfer)

    text = "drain member ID, then remove it from the group (a leader hands over first)"
    remove = commands.add_parser("remove-member", help=text, description=text)
    remove.set_defaults(handler=_handle, command_name="remove-member")
    remove.add_argument("id", metavar="ID", type=_member_id, help="the member's node id")
    remove.add_argument(
        "--drain-timeout",
        type=non_negative_int,
        metavar="S",
        help="seconds to wait for the balancers to drain it (default: the agent's)",
    )
    client_options(remove)


def _handle(args: argparse.Namespace) -> int:
    import sys

    from .cli_types import PROG
    from .client import ClientError, run_client

    try:
        return run_client(args, _run)
    except ClientError as exc:
        print(f"{PROG} {args.command_name}: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(api: APIClient, args: argparse.Namespace) -> int:
    cmd = args.command_name
    if cmd == "maintenance on":
        answer = api.maintenance_on(args.id, reason=args.reason, force=args.force)
        print(_maintenance_line(answer))
    elif cmd == "maintenance off":
        answer = api.maintenance_off(args.id)
        print(_maintenance_line(answer))
    elif cmd == "transfer-leadership":
        answer = api.transfer_leadership(args.to)
        print(f"leader: {answer.get('leader_id')}")
    else:
        drain = args.drain_timeout
        timeout = max(api.timeout, drain + 30.0) if drain is not None else None
        answer = api.remove_member(args.id, drain_timeout=drain, timeout=timeout)
        print(f"{args.id} was removed from the group (index {answer.get('index')})")
    return 0


def _maintenance_line(answer: dict[str, Any]) -> str:
    mid = answer.get("id")
    if answer.get("maintenance"):
        what = "now" if answer.get("changed") else "already"
        reason = f" ({answer['reason']})" if answer.get("reason") else ""
        return f"{mid} is {what} in maintenance{reason}: weight 0, drained; still a voter"
    if answer.get("changed"):
        return f"{mid} is out of maintenance: back in rotation"
    return f"{mid} was not in maintenance"
