# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Who runs a playbook, and whether that run has ended: what the collection's two locks
(``fleet_lock``, a key of the cluster's store; ``controller_lock``, a file on the controller)
record of the run that takes them, and how another run judges a lock it finds.

A lock records the controller (its machine id) and the ``ansible-playbook`` process with its
start time; a run on the same controller may take it over as soon as that process is gone,
any run once the lock's ``ttl`` has passed since it was taken.
"""

from __future__ import annotations

import os
import socket


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _stat(pid):
    """(parent pid, start time in clock ticks) of ``pid`` from /proc; OSError when gone."""
    raw = _read(f"/proc/{pid}/stat")
    fields = raw[raw.rindex(b")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[19])


def playbook_process(start=None):
    """(pid, start ticks) of the ``ansible-playbook`` process this module runs under, or None
    where /proc does not tell. Its workers are forks of it (the same command line): the
    outermost of the run of ancestors with its command line is the run itself."""
    try:
        pid = os.getppid() if start is None else start
        found = None
        for _depth in range(64):
            if pid <= 1:
                break
            cmdline = _read(f"/proc/{pid}/cmdline")
            ppid, ticks = _stat(pid)
            if found is None:
                if b"ansible-playbook" in cmdline:
                    found = (pid, ticks, cmdline)
            elif cmdline == found[2]:
                found = (pid, ticks, cmdline)
            else:
                break
            pid = ppid
    except (OSError, ValueError, IndexError):
        return None
    return None if found is None else found[:2]


def controller_id():
    """This controller: its machine id, else its host name."""
    try:
        machine = _read("/etc/machine-id").decode("ascii", "replace").strip()
    except OSError:
        machine = ""
    return machine or socket.gethostname()


def process_alive(pid, ticks):
    """Whether process ``pid`` runs and is the one started at ``ticks`` (not a reuse)."""
    try:
        return _stat(pid)[1] == ticks
    except (OSError, ValueError, IndexError):
        return False


def new_lock(holder, run_id, ttl, now):
    """The lock a run takes: who, which run, this controller and run's process, when."""
    process = playbook_process()
    return {
        "holder": holder,
        "run": run_id,
        "controller": controller_id(),
        "pid": process[0] if process else None,
        "pid_start": process[1] if process else None,
        "taken": now,
        "ttl": ttl,
    }


def stale(lock, now, here):
    """Why ``lock`` (another run's) may be taken over without force, or None."""
    if not isinstance(lock, dict) or not isinstance(lock.get("run"), str):
        return "it is not a lock this module wrote"
    taken, ttl = lock.get("taken"), lock.get("ttl")
    if isinstance(taken, (int, float)) and isinstance(ttl, (int, float)) and now >= taken + ttl:
        return f"it was taken {now - taken:.0f} s ago, more than its ttl of {ttl:g} s"
    pid, ticks = lock.get("pid"), lock.get("pid_start")
    if lock.get("controller") == here and isinstance(pid, int) and isinstance(ticks, int):
        if not process_alive(pid, ticks):
            return f"its run (process {pid} on this controller) has ended"
    return None


def describe(lock, now):
    """A lock as a refusal names it."""
    if not isinstance(lock, dict):
        return f"a value that is not a lock ({str(lock)[:80]})"
    said = f"{lock.get('holder') or 'an unnamed holder'} (run {lock.get('run')}"
    taken, ttl = lock.get("taken"), lock.get("ttl")
    if isinstance(taken, (int, float)):
        said += f", taken {now - taken:.0f} s ago"
        if isinstance(ttl, (int, float)):
            said += f", abandoned {ttl:g} s after it was taken"
    return said + ")"


def claim(lock, run_id, now, force):
    """What a run that wants the lock does with ``lock`` (the one there, or None): (True, None)
    when it is free or the run's own (renewed); (True, {"lock", "why"}) when another run's is
    taken over (ended, past its ttl, or ``force``); (False, None) when another run holds it
    and has not been seen to end."""
    if lock is None or (isinstance(lock, dict) and lock.get("run") == run_id):
        return True, None
    why = stale(lock, now, controller_id())
    if why is None and not force:
        return False, None
    return True, {"lock": lock, "why": why or "force=true"}


def refusal(lock, now, where="", gone=""):
    """The message of a run that finds ``lock`` held by another: ``where`` the lock is (after
    "locked"), ``gone`` what else must have ended before force is right."""
    return (
        f"the fleet is locked{where} by {describe(lock, now)}: another playbook run is changing "
        f"it. Wait for that run to end. If it has ended without giving the lock back{gone}, take "
        "the lock over with force=true (the playbooks: -e hafleet_lock_force=true)."
    )
