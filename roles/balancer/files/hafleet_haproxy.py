# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HAProxy's process and configuration for the hafleet balancer role.

Run with the agent's virtualenv Python: the configuration comes from
``hafleet_agent.haproxy_config`` (the backend's servers are managed at run time by
``hafleet-agent balancer``; a reload carries them over through the server-state-file).
Every command prints one JSON line ``{"changed": bool, ...}``.

    hafleet-haproxy render   --settings FILE [--with-servers] [-o OUT]
    hafleet-haproxy start    --settings FILE --config OUT --pidfile P [--haproxy BIN]
    hafleet-haproxy reload   --settings FILE --config OUT --pidfile P [--haproxy BIN]
                             [--prepare-only]
    hafleet-haproxy stop     --pidfile P [--timeout S]
    hafleet-haproxy status   --pidfile P
    hafleet-haproxy servers  --settings FILE
    hafleet-haproxy wait     --settings FILE --servers ID[,ID..] [--timeout S] [--probe-url URL]

The settings file is JSON: ``backend``, ``frontend``, ``bind`` (list of ADDR:PORT),
``socket``, ``state_file``, ``strategy``, ``health_path``, ``maxconn``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

# srv_op_state 2 is "running" (UP); see HAProxy's management guide.
OP_RUNNING = 2


def _haproxy_config():
    from hafleet_agent import haproxy_config  # the agent's virtualenv

    return haproxy_config


def load_settings(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def render_text(settings, with_servers):
    hc = _haproxy_config()
    servers = []
    if with_servers:
        try:
            with open(settings["state_file"], encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            text = ""
        if text.strip():
            try:
                servers = hc.servers_from_state(text, settings["backend"])
            except hc.StateParseError:
                servers = []
    return hc.render(
        hc.Settings(
            backend=settings["backend"],
            frontend=settings.get("frontend") or "hafleet_in",
            bind=list(settings["bind"]),
            socket_path=settings["socket"],
            state_file=settings["state_file"],
            strategy=settings.get("strategy") or "weighted",
            servers=servers,
            health_path=settings.get("health_path") or None,
            maxconn=int(settings.get("maxconn") or 4096),
        )
    )


def write_config(settings, out, haproxy):
    hc = _haproxy_config()
    text = render_text(settings, with_servers=True)
    hc.write_atomic(out, text, mode=0o640)
    check = subprocess.run(
        [haproxy, "-c", "-q", "-f", out], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise RuntimeError(f"haproxy -c refused {out}: {check.stderr.strip() or check.stdout}")


# ---- the process ----------------------------------------------------------------------------


def _is_haproxy(pid):
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return os.path.basename(exe).startswith("haproxy")


def read_pids(pidfile):
    try:
        with open(pidfile, encoding="utf-8") as handle:
            pids = [int(line) for line in handle.read().split() if line.strip().isdigit()]
    except OSError:
        return []
    return [pid for pid in pids if _is_haproxy(pid)]


def wait_socket(path, timeout):
    hc = _haproxy_config()
    deadline = time.monotonic() + timeout
    while True:
        try:
            if "Pid:" in hc.runtime_command(path, "show info", timeout=1.0):
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def cmd_start(args):
    settings = load_settings(args.settings)
    pids = read_pids(args.pidfile)
    if pids:
        return {"changed": False, "state": "running", "pids": pids}
    write_config(settings, args.config, args.haproxy)
    started = subprocess.run(
        [args.haproxy, "-D", "-p", args.pidfile, "-f", args.config],
        capture_output=True,
        text=True,
        check=False,
    )
    if started.returncode != 0:
        return {"failed": True, "msg": f"haproxy did not start: {started.stderr.strip()}"}
    if not wait_socket(settings["socket"], 10):
        return {"failed": True, "msg": f"haproxy started but {settings['socket']} does not answer"}
    return {"changed": True, "state": "started", "pids": read_pids(args.pidfile)}


def cmd_reload(args):
    """Save the live server state, render the configuration with those servers, then start a
    new process that takes the listening sockets over (-x) and lets the old one finish (-sf).
    """
    hc = _haproxy_config()
    settings = load_settings(args.settings)
    old = read_pids(args.pidfile)
    try:
        hc.save_state(settings["socket"], settings["state_file"])
    except (OSError, hc.StateParseError) as exc:
        if old:
            return {"failed": True, "msg": f"cannot save the server state first: {exc}"}
    write_config(settings, args.config, args.haproxy)
    if args.prepare_only:
        return {"changed": True, "state": "prepared"}
    if not old:
        return cmd_start(args)
    argv = [args.haproxy, "-D", "-p", args.pidfile, "-f", args.config]
    argv += ["-x", settings["socket"], "-sf"] + [str(pid) for pid in old]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"failed": True, "msg": f"haproxy did not reload: {done.stderr.strip()}"}
    if not wait_socket(settings["socket"], 10):
        return {"failed": True, "msg": "haproxy reloaded but its socket does not answer"}
    return {"changed": True, "state": "reloaded", "pids": read_pids(args.pidfile), "old": old}


def cmd_stop(args):
    pids = read_pids(args.pidfile)
    if not pids:
        return {"changed": False, "state": "stopped"}
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)  # soft stop: finish the connections in flight
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and any(_is_haproxy(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if _is_haproxy(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_is_haproxy(pid) for pid in pids):
        time.sleep(0.1)
    try:
        os.unlink(args.pidfile)
    except FileNotFoundError:
        pass
    return {"changed": True, "state": "stopped", "pids": pids}


def cmd_status(args):
    pids = read_pids(args.pidfile)
    return {"changed": False, "state": "running" if pids else "stopped", "pids": pids}


# ---- the backend's servers ------------------------------------------------------------------


def servers(settings):
    """The backend's servers: name, address, weight, state, sessions, from the socket."""
    hc = _haproxy_config()
    backend = settings["backend"]
    state = hc.runtime_command(settings["socket"], f"show servers state {backend}")
    stat = hc.runtime_command(settings["socket"], f"show stat {backend} -1 -1")
    sessions = {}
    status = {}
    lines = stat.lstrip("# ").splitlines()
    header = lines[0].split(",") if lines else []
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") not in ("BACKEND", "FRONTEND"):
            sessions[row["svname"]] = int(row.get("scur") or 0)
            status[row["svname"]] = row.get("status", "")
    out = []
    for srv in hc.parse_servers_state(state):
        if srv.backend != backend:
            continue
        out.append(
            {
                "name": srv.name,
                "address": f"{srv.addr}:{srv.port}",
                "weight": srv.uweight,
                "up": srv.op_state == OP_RUNNING,
                "maint": srv.maint,
                "drain": srv.drain,
                "status": status.get(srv.name, ""),
                "sessions": sessions.get(srv.name, 0),
            }
        )
    return sorted(out, key=lambda s: s["name"])


def cmd_servers(args):
    return {"changed": False, "servers": servers(load_settings(args.settings))}


def serving(server):
    return server["up"] and not server["maint"] and not server["drain"] and server["weight"] > 0


def cmd_wait(args):
    """Wait (bounded) until every named server serves; then, with --probe-url, until a
    request through HAProxy has reached each of them (the X-Node header names the node)."""
    settings = load_settings(args.settings)
    wanted = {name for item in args.servers for name in item.split(",") if name}
    deadline = time.monotonic() + args.timeout
    table = []
    while True:
        try:
            table = servers(settings)
            error = None
        except (OSError, ValueError) as exc:
            table, error = [], str(exc)
        ready = {s["name"] for s in table if serving(s)}
        if wanted <= ready:
            break
        if time.monotonic() >= deadline:
            return {
                "failed": True,
                "msg": f"not serving after {args.timeout:g}s: {', '.join(sorted(wanted - ready))}"
                + (f" ({error})" if error else ""),
                "servers": table,
            }
        time.sleep(0.5)
    seen = {}
    if args.probe_url:
        attempts = 0
        while not wanted <= set(seen) and time.monotonic() < deadline:
            attempts += 1
            try:
                with urllib.request.urlopen(args.probe_url, timeout=5) as response:
                    node = response.headers.get("X-Node")
                    response.read()
                if node:
                    seen[node] = seen.get(node, 0) + 1
            except OSError:
                time.sleep(0.1)
        if not wanted <= set(seen):
            return {
                "failed": True,
                "msg": f"{args.probe_url} never reached {', '.join(sorted(wanted - set(seen)))} "
                f"in {attempts} requests",
                "servers": table,
                "reached": seen,
            }
    return {"changed": False, "servers": table, "reached": seen}


def parse(argv):
    parser = argparse.ArgumentParser(
        prog="hafleet-haproxy", description=__doc__.split("\n", maxsplit=1)[0]
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


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.cmd == "render":
        text = render_text(load_settings(args.settings), args.with_servers)
        if args.output:
            _haproxy_config().write_atomic(args.output, text, mode=0o640)
        else:
            sys.stdout.write(text)
        return 0
    handlers = {
        "start": cmd_start,
        "reload": cmd_reload,
        "stop": cmd_stop,
        "status": cmd_status,
        "servers": cmd_servers,
        "wait": cmd_wait,
    }
    try:
        result = handlers[args.cmd](args)
    except (OSError, RuntimeError, ValueError) as exc:
        result = {"failed": True, "msg": str(exc)}
    print(json.dumps(result, sort_keys=True))
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
