"""Where one client's writes wait outside the agents' own code: the kernel's view of a 3-member
cluster at 1 client (which CPU each process waits for, how long a sleeping CPU takes to wake,
how long each follower's ``fdatasync`` takes while the others sync on the same disk).

    bench/.venv/bin/python bench/sched_trace.py [--seconds 2] [--tree AGENT_SRC]

Needs ``perf`` (Debian's ``linux-perf``) and root. The agents are real ``hafleet-agent run``
processes (``agent_bench.Cluster``, loopback, fsync on); one client writes 100-byte values to
the leader as in ``make bench``; meanwhile ``perf record -a`` takes the scheduler's switches and
wake-ups and the system calls of the write path (sendto, recvfrom, epoll_wait, pwrite64,
fdatasync, io_submit) of every CPU for ``--seconds``. It prints:

- each CPU's time idle, in the agents and the client, and in kernel workers;
- for every wake-up of the leader, the followers and the client, the time until it ran, by
  where the kernel put it (on an idle CPU: the time a halted virtual CPU takes to come back;
  on a busy one while the other was idle: the wait behind whatever ran there) and whether it
  ran there or moved;
- the followers' ``fdatasync`` durations, against the same call of one process alone on this
  disk (``--alone``: 2,000 syncs of 264 bytes, 0.8 ms apart, before the cluster starts).

Nothing is written to ``bench/results``: this is the evidence behind docs/benchmarks.md's
"eighteenth session" analysis, for re-checking it on another machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402

EVENTS = ["sched:sched_switch", "sched:sched_waking"] + [
    f"syscalls:sys_{edge}_{call}"
    for call in ("sendto", "recvfrom", "epoll_wait", "pwrite64", "fdatasync", "io_submit")
    for edge in ("enter", "exit")
]
_LINE = re.compile(r"\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)")
_KV = re.compile(r"(\w+)=(\S+)")


def parse(lines) -> list[tuple[float, int, int, str, dict[str, str]]]:
    """``perf script`` lines -> (time in µs, pid, cpu, event, fields)."""
    out = []
    for line in lines:
        m = _LINE.match(line)
        if m is None:
            continue
        _, pid, cpu, t, event, rest = m.groups()
        out.append((float(t) * 1e6, int(pid), int(cpu), event, dict(_KV.findall(rest))))
    return out


def summary(v: list[float]) -> str:
    if not v:
        return "none"
    return (
        f"n={len(v):5d}  p50 {compare.pct(v, 50):5.0f}  p90 {compare.pct(v, 90):5.0f}  "
        f"mean {statistics.fmean(v):5.0f} µs"
    )


def cpu_shares(events, roles: dict[int, str]) -> dict[int, dict[str, float]]:
    """Per CPU: the share of the traced time each kind of task ran (idle, a role, other)."""
    shares: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    last: dict[int, tuple[float, int]] = {}
    for t, _, cpu, event, f in events:
        if event != "sched:sched_switch":
            continue
        if cpu in last:
            t0, pid = last[cpu]
            kind = "idle" if pid == 0 else roles.get(pid, "other tasks")
            shares[cpu][kind] += t - t0
        last[cpu] = (t, int(f["next_pid"]))
    for per in shares.values():
        total = sum(per.values()) or 1.0
        for k in per:
            per[k] /= total
    return shares


def wake_delays(events, roles: dict[int, str]) -> dict[tuple[str, str, str], list[float]]:
    """For each wake-up of a process in ``roles``: the µs until it ran, keyed by (role, where
    it was put and what the other CPU did at that moment, where it ran)."""
    running: dict[int, int] = {}
    waiting: dict[int, tuple[float, int, str]] = {}
    out: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for t, _, cpu, event, f in events:
        if event == "sched:sched_waking":
            pid = int(f["pid"])
            if pid in roles and pid not in waiting:
                target = int(f["target_cpu"])
                others = [c for c in running if c != target]
                where = "put on an idle CPU" if running.get(target) == 0 else "put on a busy CPU"
                if others and all(running[c] == 0 for c in others):
                    where += ", the other idle"
                elif others:
                    where += ", the other busy"
                waiting[pid] = (t, target, where)
        elif event == "sched:sched_switch":
            nxt = int(f["next_pid"])
            running[cpu] = nxt
            if nxt in waiting:
                t0, target, where = waiting.pop(nxt)
                ran = "ran there" if cpu == target else "moved"
                out[(roles[nxt], where, ran)].append(t - t0)
    return out


def sync_times(events, pids: set[int]) -> list[float]:
    """The µs of each ``fdatasync`` of ``pids``."""
    began: dict[int, float] = {}
    out = []
    for t, pid, _, event, _ in events:
        if pid not in pids:
            continue
        if event == "syscalls:sys_enter_fdatasync":
            began[pid] = t
        elif event == "syscalls:sys_exit_fdatasync" and pid in began:
            out.append(t - began.pop(pid))
    return out


def sync_alone(directory: Path, count: int = 2000) -> list[float]:
    """One process alone: ``count`` appends of 264 bytes with ``fdatasync``, 0.8 ms apart."""
    path = directory / "alone.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"\0" * (count * 264 + 4096))
        os.fsync(fd)
        out = []
        for i in range(count):
            t = time.perf_counter_ns()
            os.pwrite(fd, b"y" * 264, i * 264)
            os.fdatasync(fd)
            out.append((time.perf_counter_ns() - t) / 1000)
            time.sleep(0.0008)
        return out
    finally:
        os.close(fd)
        path.unlink()


def threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


async def _traced_writes(x, work: Path, perf: str, seconds: float):
    """Start ``x``, write as one client while perf records; (writes, perf.data, roles by
    thread id, followers' process ids)."""
    async with compare.session() as s:
        x.start_all()
        try:
            lead = await x.steady(s, 60)
            await compare.load(s, x, lead, 1, 1.0, "put", "warm")  # connections, caches
            data = work / f"{x.kind}.data"
            argv = [perf, "record", "-a", "-q", "-o", str(data), "-e", ",".join(EVENTS)]
            rec = subprocess.Popen(
                [*argv, "--", "sleep", str(seconds)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            res = await compare.load(s, x, lead, 1, seconds + 1.0, "put", "traced")
            rec.wait(timeout=seconds + 60)
            roles = {t: "client" for t in threads(os.getpid())}
            followers = set()
            for name, pid in x.pids().items():
                role = "leader" if name == lead else "follower"
                roles.update({t: role for t in threads(pid)})
                if role == "follower":
                    followers.add(pid)
        finally:
            x.stop()
    return res, data, roles, followers


def report(label: str, res: dict, events, roles: dict[int, str], followers: set[int]) -> None:
    print(f"\n== {label}: 1 client, {res['per_s']:.0f} writes/s, p50 {res['p50_ms']:.2f} ms")
    print("CPU time (share of the traced time):")
    for cpu, per in sorted(cpu_shares(events, roles).items()):
        parts = sorted(per.items(), key=lambda kv: -kv[1])
        print(f"  CPU {cpu}: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in parts))
    print("From a wake-up to running, by where the kernel put the thread:")
    delays = wake_delays(events, roles)
    for key in sorted(delays, key=lambda k: (k[0], -len(delays[k]))):
        if len(delays[key]) >= 20:
            print(f"  {key[0]:8s} {key[1]:38s} {key[2]:9s}  {summary(delays[key])}")
    print("A follower's fdatasync: " + summary(sync_times(events, followers)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="how long perf records")
    ap.add_argument("--systems", default="hafleet,etcd", help="hafleet, etcd or both")
    ap.add_argument("--alone", action="store_true", help="also time one process's syncs alone")
    a = ap.parse_args()
    perf = shutil.which("perf")
    if perf is None or os.geteuid() != 0:
        print("sched_trace.py needs perf (apt-get install linux-perf) and root", file=sys.stderr)
        return 2
    import common

    work = Path(tempfile.mkdtemp(prefix="sched-trace-"))
    try:
        if a.alone:
            print("One process's fdatasync alone: " + summary(sync_alone(work)))
        kinds = {"hafleet": common.Hafleet, "etcd": common.Etcd}
        for kind in a.systems.split(","):
            x = kinds[kind](3, work, common.Timing())
            res, data, roles, followers = asyncio.run(_traced_writes(x, work, perf, a.seconds))
            script = subprocess.run(
                [perf, "script", "-i", str(data), "-F", "comm,pid,cpu,time,event,trace"],
                capture_output=True,
                text=True,
                check=True,
            )
            # sched events name threads (pid= / next_pid= are thread ids); the first column
            # is the process id, which is what the system calls are matched on
            report(x.label, res, parse(script.stdout.splitlines()), roles, followers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
