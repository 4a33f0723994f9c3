"""HAProxy's process next to the syncer: render its configuration, start, reload, stop.

Used by the balancer role through ``hafleet-haproxy`` (:mod:`.haproxy_cli`) and by the
systemd unit's ExecStartPre/ExecReload. The backend's servers are managed at run time by
``hafleet-agent balancer``; a reload carries them over through the server-state-file
(:mod:`.haproxy_config` says how). Every command returns a dict ``{"changed": bool, ...}``
(``"failed": True`` and ``"msg"`` when it did not work), printed as one JSON line.

The settings file is JSON: ``backend``, ``frontend``, ``bind`` (list of ADDR:PORT),
``socket``, ``state_file``, ``strategy``, ``health_path``, ``maxconn``; optional, for least
privilege: ``user``, ``group``, ``chroot``, ``socket_mode``, ``socket_group`` (empty or missing:
HAProxy stays the user it starts as, the socket 600).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from ..supervise import Proc, remove, stop_processes
from .haproxy_config import (
    Settings,
    StateParseError,
    parse_servers_state,
    render,
    servers_from_state,
    write_atomic,
)
from .runtime_api import parse_stat, runtime_command

# srv_op_state 2 is "running" (UP); see HAProxy's management guide.
OP_RUNNING = 2
SOCKET_WAIT_S = 10.0
HARD_STOP_S = 5.0

Result = dict[str, Any]


def load_settings(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def render_text(settings: Mapping[str, Any], with_servers: bool) -> str:
    """The configuration; ``with_servers``: with the backend's servers of the state file."""
    servers = []
    if with_servers:
        try:
            with open(settings["state_file"], encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            text = ""
        if text.strip():
            try:
                servers = servers_from_state(text, settings["backend"])
            except StateParseError:
                servers = []
    return render(
        Settings(
            backend=settings["backend"],
            frontend=settings.get("frontend") or "hafleet_in",
            bind=list(settings["bind"]),
            socket_path=settings["socket"],
            state_file=settings["state_file"],
            strategy=settings.get("strategy") or "weighted",
            servers=servers,
            health_path=settings.get("health_path") or None,
            maxconn=int(settings.get("maxconn") or 4096),
            user=settings.get("user") or None,
            group=settings.get("group") or None,
            chroot=settings.get("chroot") or None,
            socket_mode=str(settings.get("socket_mode") or "600"),
            socket_group=settings.get("socket_group") or None,
        )
    )


def write_config(settings: Mapping[str, Any], out: str, haproxy: str) -> None:
    """Render (with the saved servers) to ``out`` and have HAProxy check it."""
    write_atomic(out, render_text(settings, with_servers=True), mode=0o640)
    check = subprocess.run(
        [haproxy, "-c", "-q", "-f", out], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise RuntimeError(f"haproxy -c refused {out}: {check.stderr.strip() or check.stdout}")


def save_state(socket_path: str, state_file: str) -> str:
    """Dump every backend's servers state to ``state_file`` (atomically); returns it."""
    text = runtime_command(socket_path, "show servers state")
    parse_servers_state(text)  # refuse to write an error message as the state
    write_atomic(state_file, text)
    return text


# ---- the process ----------------------------------------------------------------------------


def _is_haproxy(pid: int) -> bool:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return os.path.basename(exe).startswith("haproxy")


def read_pids(pidfile: str) -> list[int]:
    """The PIDs of HAProxy's pid file that are HAProxy processes (HAProxy writes the file, with
    no start time: the executable tells a recycled PID)."""
    try:
        with open(pidfile, encoding="utf-8") as handle:
            pids = [int(word) for word in handle.read().split() if word.isdigit()]
    except OSError:
        return []
    return [pid for pid in pids if _is_haproxy(pid)]


def wait_socket(path: str, timeout: float) -> bool:
    """Wait (bounded) until HAProxy answers on its admin socket."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if "Pid:" in runtime_command(path, "show info", timeout=1.0):
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def start(settings_file: str, config: str, pidfile: str, haproxy: str = "haproxy") -> Result:
    settings = load_settings(settings_file)
    pids = read_pids(pidfile)
    if pids:
        return {"changed": False, "state": "running", "pids": pids}
    write_config(settings, config, haproxy)
    started = subprocess.run(
        [haproxy, "-D", "-p", pidfile, "-f", config], capture_output=True, text=True, check=False
    )
    if started.returncode != 0:
        return {"failed": True, "msg": f"haproxy did not start: {started.stderr.strip()}"}
    if not wait_socket(settings["socket"], SOCKET_WAIT_S):
        return {"failed": True, "msg": f"haproxy started but {settings['socket']} does not answer"}
    return {"changed": True, "state": "started", "pids": read_pids(pidfile)}


def reload(
    settings_file: str,
    config: str,
    pidfile: str,
    haproxy: str = "haproxy",
    prepare_only: bool = False,
) -> Result:
    """Save the live server state, render the configuration with those servers, then start a
    new process that takes the listening sockets over (-x) and lets the old one finish (-sf).
    ``prepare_only`` stops after the configuration (systemd's ExecReload, which then signals
    the master)."""
    settings = load_settings(settings_file)
    old = read_pids(pidfile)
    try:
        save_state(settings["socket"], settings["state_file"])
    except (OSError, StateParseError) as exc:
        if old:
            return {"failed": True, "msg": f"cannot save the server state first: {exc}"}
    write_config(settings, config, haproxy)
    if prepare_only:
        return {"changed": True, "state": "prepared"}
    if not old:
        return start(settings_file, config, pidfile, haproxy)
    argv = [haproxy, "-D", "-p", pidfile, "-f", config]
    argv += ["-x", settings["socket"], "-sf"] + [str(pid) for pid in old]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"failed": True, "msg": f"haproxy did not reload: {done.stderr.strip()}"}
    if not wait_socket(settings["socket"], SOCKET_WAIT_S):
        return {"failed": True, "msg": "haproxy reloaded but its socket does not answer"}
    return {"changed": True, "state": "reloaded", "pids": read_pids(pidfile), "old": old}


def stop(pidfile: str, timeout: float) -> Result:
    """Soft stop (SIGUSR1: finish the connections in flight) for up to ``timeout`` seconds,
    then SIGTERM; then remove the pid file."""
    pids = read_pids(pidfile)
    if not pids:
        return {"changed": False, "state": "stopped"}
    stop_processes(
        [Proc.of(pid) for pid in pids],
        timeout,
        soft=signal.SIGUSR1,
        hard=signal.SIGTERM,
        hard_timeout=HARD_STOP_S,
    )
    remove(pidfile)
    return {"changed": True, "state": "stopped", "pids": pids}


def status(pidfile: str) -> Result:
    pids = read_pids(pidfile)
    return {"changed": False, "state": "running" if pids else "stopped", "pids": pids}


# ---- the backend's servers ------------------------------------------------------------------


def servers(settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The backend's servers: name, address, weight, state, sessions, from the socket."""
    backend = settings["backend"]
    state = runtime_command(settings["socket"], f"show servers state {backend}")
    stat = runtime_command(settings["socket"], f"show stat {backend} -1 -1")
    rows = parse_stat(stat, backend)
    out = []
    for srv in parse_servers_state(state):
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
                "status": rows.get(srv.name, {}).get("status", ""),
                "sessions": int(rows.get(srv.name, {}).get("scur") or 0),
            }
        )
    return sorted(out, key=lambda s: s["name"])


def serving(server: Mapping[str, Any]) -> bool:
    return server["up"] and not server["maint"] and not server["drain"] and server["weight"] > 0


def wait(
    settings_file: str, names: Iterable[str], timeout: float, probe_url: str | None = None
) -> Result:
    """Wait (bounded) until every named server serves; then, with ``probe_url``, until a
    request through HAProxy has reached each of them (the X-Node header names the node)."""
    settings = load_settings(settings_file)
    wanted = set(names)
    deadline = time.monotonic() + timeout
    table: list[dict[str, Any]] = []
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
                "msg": f"not serving after {timeout:g}s: {', '.join(sorted(wanted - ready))}"
                + (f" ({error})" if error else ""),
                "servers": table,
            }
        time.sleep(0.5)
    seen: dict[str, int] = {}
    if probe_url:
        attempts = 0
        while not wanted <= set(seen) and time.monotonic() < deadline:
            attempts += 1
            try:
                with urllib.request.urlopen(probe_url, timeout=5) as response:
                    node = response.headers.get("X-Node")
                    response.read()
                if node:
                    seen[node] = seen.get(node, 0) + 1
            except OSError:
                time.sleep(0.1)
        if not wanted <= set(seen):
            return {
                "failed": True,
                "msg": f"{probe_url} never reached {', '.join(sorted(wanted - set(seen)))} "
                f"in {attempts} requests",
                "servers": table,
                "reached": seen,
            }
    return {"changed": False, "servers": table, "reached": seen}
