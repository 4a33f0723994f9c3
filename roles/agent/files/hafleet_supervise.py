# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
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
import json
import os
import signal
import subprocess
import sys
import time

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
EXIT_USAGE = 2


# ---- pid files ------------------------------------------------------------------------------


def _start_time(pid):
    """The process's start time in clock ticks since boot, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def write_pidfile(path, pid):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(f"{pid} {_start_time(pid)}\n")
    os.replace(tmp, path)


def read_pidfile(path):
    """The PID in ``path`` if that process still runs (same start time), else None."""
    try:
        with open(path, encoding="utf-8") as handle:
            parts = handle.read().split()
        pid, started = int(parts[0]), int(parts[1])
    except (OSError, ValueError, IndexError):
        return None
    if _start_time(pid) != started:
        return None
    return pid


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def wait_gone(pid, timeout):
    """Wait (bounded) until ``pid`` is gone; True when it is."""
    started = _start_time(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if started is None or _start_time(pid) != started:
            return True
        time.sleep(0.05)
    return _start_time(pid) != started


# ---- the supervising loop -------------------------------------------------------------------


class Supervisor:
    def __init__(self, args):
        self.args = args
        self.child = None
        self.stopping = False

    def log(self, text):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        sys.stdout.write(f"{stamp} hafleet-supervise[{os.getpid()}]: {text}\n")
        sys.stdout.flush()

    def on_signal(self, signum, _frame):
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def run(self):
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

    def wait_child(self):
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


def daemonize(args):
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


def cmd_start(args):
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


def cmd_stop(args):
    pid = read_pidfile(args.pidfile)
    child = read_pidfile(args.pidfile + ".child")
    if pid is None and child is None:
        remove(args.pidfile)
        remove(args.pidfile + ".child")
        return {"changed": False, "state": "stopped"}
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, args.timeout):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 5)
    child = read_pidfile(args.pidfile + ".child")
    if child is not None:
        # An orphan (its supervisor was killed): stop it as well, by its own PID.
        os.kill(child, signal.SIGTERM)
        if not wait_gone(child, args.timeout):
            os.kill(child, signal.SIGKILL)
            wait_gone(child, 5)
    remove(args.pidfile)
    remove(args.pidfile + ".child")
    return {"changed": True, "pid": pid, "state": "stopped"}


def cmd_restart(args):
    stopped = cmd_stop(args)
    started = cmd_start(args)
    started["changed"] = True
    started["was"] = "running" if stopped.get("changed") else "stopped"
    return started


def cmd_status(args):
    pid = read_pidfile(args.pidfile)
    child = read_pidfile(args.pidfile + ".child")
    return {
        "changed": False,
        "state": "running" if pid is not None else "stopped",
        "pid": pid,
        "child_pid": child,
    }


def cmd_signal(args):
    child = read_pidfile(args.pidfile + ".child")
    if child is None:
        return {"failed": True, "msg": "the command is not running"}
    os.kill(child, getattr(signal, "SIG" + args.signal.upper().replace("SIG", "", 1)))
    return {"changed": True, "child_pid": child}


def _tail(path, lines=20):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().splitlines()[-lines:]
    except OSError:
        return []


def parse(argv):
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


def _start_options(start):
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


def main(argv=None):
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
