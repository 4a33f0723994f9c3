"""``hafleet-haproxy``: HAProxy's configuration and process for the balancer role.

    hafleet-haproxy render   --settings FILE [--with-servers] [-o OUT]
    hafleet-haproxy start    --settings FILE --config OUT --pidfile P [--haproxy BIN]
    hafleet-haproxy reload   --settings FILE --config OUT --pidfile P [--haproxy BIN]
                             [--prepare-only]
    hafleet-haproxy stop     --pidfile P [--timeout S]
    hafleet-haproxy status   --pidfile P
    hafleet-haproxy servers  --settings FILE
    hafleet-haproxy wait     --settings FILE --servers ID[,ID..] [--timeout S] [--probe-url URL]

``render`` prints the configuration (or writes it with ``-o``); the other commands print one
JSON line ``{"changed": bool, ...}`` and exit 1 when it has ``"failed": true``. The settings
file is described in :mod:`hafleet_agent.balancer.process`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import process
from .haproxy_config import write_atomic


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hafleet-haproxy", description=(__doc__ or "").split("\n", maxsplit=1)[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    render = sub.add_parser("render")
    render.add_argument("--settings", required=True)
    render.add_argument("--with-servers", action="store_true")
    render.add_argument("-o", "--output")
    for name in ("start", "reload"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--settings", required=True)
        cmd.add_argument("--config", required=True)
        cmd.add_argument("--pidfile", required=True)
        cmd.add_argument("--haproxy", default="haproxy")
        cmd.add_argument("--prepare-only", action="store_true")
    stop = sub.add_parser("stop")
    stop.add_argument("--pidfile", required=True)
    stop.add_argument("--timeout", type=float, default=30.0)
    status = sub.add_parser("status")
    status.add_argument("--pidfile", required=True)
    srv = sub.add_parser("servers")
    srv.add_argument("--settings", required=True)
    wait = sub.add_parser("wait")
    wait.add_argument("--settings", required=True)
    wait.add_argument("--servers", action="append", default=[])
    wait.add_argument("--timeout", type=float, default=120.0)
    wait.add_argument("--probe-url")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> process.Result:
    if args.cmd == "start":
        return process.start(args.settings, args.config, args.pidfile, args.haproxy)
    if args.cmd == "reload":
        return process.reload(
            args.settings, args.config, args.pidfile, args.haproxy, args.prepare_only
        )
    if args.cmd == "stop":
        return process.stop(args.pidfile, args.timeout)
    if args.cmd == "status":
        return process.status(args.pidfile)
    if args.cmd == "servers":
        return {"changed": False, "servers": process.servers(process.load_settings(args.settings))}
    names = [name for item in args.servers for name in item.split(",") if name]
    return process.wait(args.settings, names, args.timeout, args.probe_url)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.cmd == "render":
        try:
            text = process.render_text(process.load_settings(args.settings), args.with_servers)
            if args.output:
                write_atomic(args.output, text, mode=0o640)
        except (OSError, ValueError, KeyError) as exc:
            print(f"hafleet-haproxy render: {exc}", file=sys.stderr)
            return 1
        if not args.output:
            sys.stdout.write(text)
        return 0
    try:
        result = run(args)
    except (OSError, RuntimeError, ValueError) as exc:
        result = {"failed": True, "msg": str(exc)}
    print(json.dumps(result, sort_keys=True))
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
