"""A small process supervisor for hosts without systemd (the hafleet lab's nodes).

    hafleet-supervise start --pidfile P --log F [--cwd D] [--env K=V ...] -- COMMAND [ARG ...]
    hafleet-supervise restart (the options of start)
    hafleet-supervise stop --pidfile P [--timeout S]
    hafleet-supervise status --pidfile P
    hafleet-supervise signal --pidfile P --signal NAME

``start`` detaches (double fork, new session, stdin from /dev/null, output appended to the
log), writes its own PID to the pid file and the child's to ``P.child``, and runs COMMAND:

- exit 0 (the agent was removed from its group, or stopped cleanly): done, no restart;
- exit 2 (bad configuration or usage): a restart would not help; it stops and says so;
- any other exit or a signal: restart after a back-off (1 s doubling to 30 s); it gives up
  after ``--max-restarts`` quick failures in a row (a run that lasted ``--stable-after``
  seconds resets the count).

SIGTERM/SIGINT to the supervisor are passed on to the child; it waits for the child (at most
``--stop-timeout`` seconds, then SIGKILL) and removes its pid files. ``start`` on a running
supervisor changes nothing. Every command prints one JSON line: ``{"changed": bool, ...}``.
PIDs are checked against the process start time, so a recycled PID is never signalled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .logfmt import iso_utc

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
EXIT_USAGE = 2


# ---- pid files ------------------------------------------------------------------------------
# One copy of the pid-file logic for every process the product stops by PID: the supervisor and
# its child here (pid files written with the start time), HAProxy in balancer/process.py (its
# own pid file, checked by executable, then by start time from the moment it is read).


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it does not exist (or
    has exited and waits to be reaped: a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def write_pidfile(path: str, pid: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(f"{pid} {start_time(pid)}\n")
    os.replace(tmp, path)


def read_pidfile(path: str) -> int | None:
    """The PID in ``path`` if that process still runs (same start time), else None."""
    try:
        with open(path, encoding="utf-8") as handle:
            parts = handle.read().split()
        pid, started = int(parts[0]), int(parts[1])
    except (OSError, ValueError, IndexError):
        return None
    if start_time(pid) != started:
        return None
    return pid


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@dataclass(frozen=True)
class Proc:
    """A process by PID and start time: a PID that was recycled is another process."""

    pid: int
    started: int | None

    @classmethod
    def of(cls, pid: int) -> Proc:
        return cls(pid, start_time(pid))

    def alive(self) -> bool:
        return self.started is not None and start_time(self.pid) == self.started

    def signal(self, signum: int) -> None:
        """Send ``signum`` if this is still the same process."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


def wait_gone(procs: Sequence[Proc], timeout: float) -> bool:
    """Wait (bounded) until every one of ``procs`` is gone; True when they are."""
    deadline = time.monotonic() + timeout
    while any(p.alive() for p in procs):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_processes(
    procs: Sequence[Proc],
    timeout: float,
    soft: int = signal.SIGTERM,
    hard: int = signal.SIGKILL,
    hard_timeout: float = 5.0,
) -> bool:
    """``soft`` to each, wait up to ``timeout`` for all to go, then ``hard`` to those left and
    wait up to ``hard_timeout``. Only processes that are still the ones named are signalled.
    True when all are gone."""
    for p in procs:
        p.signal(soft)
    if wait_gone(procs, timeout):
        return True
    for p in procs:
        p.signal(hard)
    return wait_gone(procs, hard_timeout)


# ---- the supervising loop -------------------------------------------------------------------


class Supervisor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def log(self, text: str) -> None:
        stamp = iso_utc(time.time())  # as the agent's own lines in the same log (logfmt.py)
        sys.stdout.write(f"{stamp} hafleet-supervise[{os.getpid()}]: {text}\n")
        sys.stdout.flush()

    def on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        args = self.args
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        env = dict(os.environ)
        env.update(item.split("=", 1) for item in args.env)
        quick_failures = 0
        backoff = BACKOFF_FIRST
        code = 0
        try:
            while not self.stopping:
                began = time.monotonic()
                self.log("starting: " + " ".join(args.command))
                try:
                    self.child = subprocess.Popen(
                        args.command, cwd=args.cwd, env=env, stdin=subprocess.DEVNULL
                    )
                except OSError as exc:
                    self.log(f"cannot start: {exc}")
                    code = 1
                    break
                write_pidfile(args.pidfile + ".child", self.child.pid)
                code = self.wait_child()
                remove(args.pidfile + ".child")
                ran = time.monotonic() - began
                if self.stopping:
                    self.log(f"stopped (exit {code})")
                    break
                if code == 0:
                    self.log("the command exited 0: done, no restart")
                    break
                if code == EXIT_USAGE:
                    self.log("the command exited 2 (bad configuration): not restarting")
                    break
                if ran >= args.stable_after:
                    quick_failures, backoff = 0, BACKOFF_FIRST
                quick_failures += 1
                if quick_failures > args.max_restarts:
                    self.log(f"{args.max_restarts} quick failures in a row: giving up")
                    break
                self.log(f"exited with {code} after {ran:.1f}s; restarting in {backoff:.0f}s")
                deadline = time.monotonic() + backoff
                while not self.stopping and time.monotonic() < deadline:
                    time.sleep(0.1)
                backoff = min(BACKOFF_MAX, backoff * 2)
        finally:
            remove(args.pidfile + ".child")
            remove(args.pidfile)
        return code if code >= 0 else 1

    def wait_child(self) -> int:
        args = self.args
        stop_deadline = None
        while True:
            try:
                code = self.child.wait(timeout=0.2)
                return code
            except subprocess.TimeoutExpired:
                pass
            if self.stopping:
                if stop_deadline is None:
                    stop_deadline = time.monotonic() + args.stop_timeout
                elif time.monotonic() > stop_deadline:
                    self.log(f"no exit {args.stop_timeout:g}s after SIGTERM: SIGKILL")
                    self.child.kill()


def daemonize(args: argparse.Namespace) -> str:
    """Detach: fork, new session, fork; the grandchild runs the supervisor."""
    read_end, write_end = os.pipe()
    first = os.fork()
    if first > 0:
        os.close(write_end)
        os.waitpid(first, 0)
        with os.fdopen(read_end) as pipe:
            answer = pipe.read()
        return answer
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    try:
        log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(null_fd)
        os.close(log_fd)
        os.umask(0o027)
        write_pidfile(args.pidfile, os.getpid())
        os.write(write_end, str(os.getpid()).encode())
    except OSError as exc:
        os.write(write_end, f"error: {exc}".encode())
        os._exit(1)
    finally:
        os.close(write_end)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    os._exit(Supervisor(args).run())


# ---- commands -------------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> dict[str, Any]:
    pid = read_pidfile(args.pidfile)
    if pid is not None:
        return {"changed": False, "pid": pid, "state": "running"}
    if not args.command:
        return {"failed": True, "msg": "no command given after --"}
    for path in (args.pidfile, args.log):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            return {"failed": True, "msg": f"directory {parent} does not exist"}
    remove(args.pidfile)
    answer = daemonize(args)
    if not answer.isdigit():
        return {"failed": True, "msg": f"cannot start the supervisor: {answer or 'no answer'}"}
    pid = int(answer)
    # Give the command a moment: a bad configuration exits at once and is reported here.
    deadline = time.monotonic() + args.settle
    while time.monotonic() < deadline and read_pidfile(args.pidfile) == pid:
        time.sleep(0.05)
    if read_pidfile(args.pidfile) != pid:
        return {
            "failed": True,
            "changed": True,
            "msg": f"the command stopped within {args.settle:g}s; see {args.log}",
            "log_tail": _tail(args.log),
        }
    return {"changed": True, "pid": pid, "state": "started"}


def cmd_stop(args: argparse.Namespace) -> dict[str, Any]:
    pid = read_pidfile(args.pidfile)
    child = read_pidfile(args.pidfile + ".child")
    if pid is None and child is None:
        remove(args.pidfile)
        remove(args.pidfile + ".child")
        return {"changed": False, "state": "stopped"}
    if pid is not None:
        stop_processes([Proc.of(pid)], args.timeout)
    child = read_pidfile(args.pidfile + ".child")
    if child is not None:
        # An orphan (its supervisor was killed): stop it as well, by its own PID.
        stop_processes([Proc.of(child)], args.timeout)
    remove(args.pidfile)
    remove(args.pidfile + ".child")
    return {"changed": True, "pid": pid, "state": "stopped"}


def cmd_restart(args: argparse.Namespace) -> dict[str, Any]:
    stopped = cmd_stop(args)
    started = cmd_start(args)
    started["changed"] = True
    started["was"] = "running" if stopped.get("changed") else "stopped"
    return started


def cmd_status(args: argparse.Namespace) -> dict[str, Any]:
    pid = read_pidfile(args.pidfile)
    child = read_pidfile(args.pidfile + ".child")
    return {
        "changed": False,
        "state": "running" if pid is not None else "stopped",
        "pid": pid,
        "child_pid": child,
    }


def cmd_signal(args: argparse.Namespace) -> dict[str, Any]:
    child = read_pidfile(args.pidfile + ".child")
    if child is None:
        return {"failed": True, "msg": "the command is not running"}
    os.kill(child, getattr(signal, "SIG" + args.signal.upper().replace("SIG", "", 1)))
    return {"changed": True, "child_pid": child}


def _tail(path: str, lines: int = 20) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().splitlines()[-lines:]
    except OSError:
        return []


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hafleet-supervise", description=__doc__.split("\n", maxsplit=1)[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start")
    restart = sub.add_parser("restart")
    for parser_ in (start, restart):
        _start_options(parser_)
    stop = sub.add_parser("stop")
    stop.add_argument("--pidfile", required=True)
    stop.add_argument("--timeout", type=float, default=90.0)
    status = sub.add_parser("status")
    status.add_argument("--pidfile", required=True)
    sig = sub.add_parser("signal")
    sig.add_argument("--pidfile", required=True)
    sig.add_argument("--signal", required=True)
    args = parser.parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    return args


def _start_options(start: argparse.ArgumentParser) -> None:
    start.add_argument("--pidfile", required=True)
    start.add_argument("--log", required=True)
    start.add_argument("--cwd", default="/")
    start.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    start.add_argument("--max-restarts", type=int, default=10)
    start.add_argument("--stable-after", type=float, default=60.0)
    start.add_argument("--stop-timeout", type=float, default=60.0)
    start.add_argument("--settle", type=float, default=1.0)
    start.add_argument("--timeout", type=float, default=90.0, help="restart: stop timeout")
    start.add_argument("command", nargs=argparse.REMAINDER)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    handler = {
        "start": cmd_start,
        "restart": cmd_restart,
        "stop": cmd_stop,
        "status": cmd_status,
        "signal": cmd_signal,
    }
    result = handler[args.cmd](args)
    print(json.dumps(result, sort_keys=True))
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
