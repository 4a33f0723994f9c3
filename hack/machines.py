#!/usr/bin/env python3
"""The machines lab (root): Debian 12 machines with systemd, sshd and a sudo user, each a
systemd-nspawn container on a lab bridge, for the collection's real-host path. docs/machines.md.

    hack/machines.py up [--nodes N] [--balancers B] [--prefix P] [--bridge BR] [--subnet CIDR]
    hack/machines.py status [...]
    hack/machines.py down [...]

`up` is idempotent (a second run changes nothing and says so); `down` removes every machine,
namespace, link, mount, cgroup, process and file the lab's state records, also after a failed
`up`. Standard library only."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import os
import sys
import time
from pathlib import Path

from machines import plan as P
from machines import rootfs
from machines.host import Host, die, psskb, say
from machines.resources import HostError

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hack/machines.py", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    defaults = P.Lab()
    parser.add_argument("--nodes", type=int, default=defaults.nodes, help="pool machines")
    parser.add_argument("--balancers", type=int, default=defaults.balancers)
    parser.add_argument("--prefix", default=defaults.prefix, help="machine name prefix")
    parser.add_argument("--bridge", default=defaults.bridge)
    parser.add_argument("--subnet", default=defaults.subnet)
    parser.add_argument("--pool-start", type=int, default=defaults.pool_start)
    parser.add_argument("--balancer-start", type=int, default=defaults.balancer_start)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where hosts.yml, the key and known_hosts go (build/machines[-NAME])",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("/var/cache/hafleet/machines"),
        help="the rootfs and apt caches, shared by all labs",
    )
    parser.add_argument(
        "--state-root",
        type=Path,
        default=Path("/var/lib/hafleet/machines"),
        help="each lab's state: overlays, logs, state.json",
    )
    parser.add_argument("--supervise", type=Path, default=REPO / ".venv/bin/hafleet-supervise")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        help="seconds for the booted machines to answer on ssh",
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def locked(root: Path, lab: str):
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".{lab}.lock"
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield path


def up(host: Host) -> int:
    lab, started = host.lab, time.monotonic()
    host.check_spec()
    changed = host.up_lab()
    lower = rootfs.build(host.cache, lab.proxy)
    recorded = host.state.machines()
    wanted = {m.name: m for m in lab.machines()}
    candidates = [
        wanted[n]
        for n in sorted(recorded & set(wanted))
        if host.running(host.machine_dir(n) / "supervise.pid")
    ]
    running = host.ready(candidates) if candidates else set()
    the_plan = P.plan(lab, recorded, running)
    say(the_plan.summary())
    if the_plan.remove:
        problems = host.remove(the_plan.remove)
        if problems:
            raise HostError("; ".join(problems))
    boot = the_plan.create + the_plan.start
    for m in lab.machines():
        host.ensure_machine(m, lower)
    changed |= host.write_outputs()
    booted = time.monotonic()
    for m in boot:
        say(f"{m.name} ({m.role}, {m.address}): booting")
    with concurrent.futures.ThreadPoolExecutor(max(1, len(boot))) as pool:
        list(pool.map(host.boot, boot))
    if boot:
        host.wait_ready(boot, host.ready_timeout, booted)
    changed |= the_plan.changes
    took = time.monotonic() - started
    if changed:
        say(f"up: {len(wanted)} machine(s) ready in {took:.1f}s; inventory {host.inventory}")
    else:
        say(f"up: nothing changed ({len(wanted)} machine(s) running); {host.inventory}")
    return 0


def down(host: Host, lock: Path) -> int:
    owners = sorted(host.state.machines()) + ["lab"]
    if not host.state.resources:
        say(f"down: lab {host.lab.name} has nothing recorded")
    problems = host.remove(owners)
    with contextlib.suppress(OSError):
        lock.unlink()
        host.dir.parent.rmdir()  # the state root, when no other lab is left in it
    if problems:
        return die("down left: " + "; ".join(problems))
    say(f"down: lab {host.lab.name} removed")
    return 0


def status(host: Host) -> int:
    machines = sorted(host.state.machines(), key=P._natural)
    if not machines:
        say(f"lab {host.lab.name}: no machines")
        return 0
    by_name = {m.name: m for m in host.lab.machines()}
    known = [by_name[n] for n in machines if n in by_name]
    ready = host.ready(known)
    for name in machines:
        up_ = host.running(host.machine_dir(name) / "supervise.pid")
        addr = by_name[name].address if name in by_name else "?"
        ssh = "ssh-ready" if name in ready else "no-ssh"
        print(
            f"{name:<20} {addr:<15} {'running' if up_ else 'stopped':<8} {ssh:<9} "
            f"{psskb(name) / 1024:6.1f} MB PSS"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    lab = P.Lab(**{f.name: getattr(args, f.name) for f in dataclasses.fields(P.Lab)})
    try:
        lab.check()
    except P.PlanError as exc:
        return die(str(exc))
    if os.geteuid() != 0:
        return die("run as root (namespaces, mounts, cgroups)")
    if args.command != "status" and not args.supervise.exists():
        return die(f"{args.supervise} is missing: make venv")
    out = args.out or REPO / "build" / lab.out_name
    host = Host(lab, args.state_root, args.cache_dir, out.resolve(), args.supervise)
    host.ready_timeout = args.ready_timeout
    try:
        with locked(args.state_root, lab.name) as lock:
            if args.command == "up":
                return up(host)
            if args.command == "down":
                return down(host, lock)
            return status(host)
    except HostError as exc:
        return die(f"{exc} (hack/machines.py down removes what was made)")


if __name__ == "__main__":
    sys.exit(main())
