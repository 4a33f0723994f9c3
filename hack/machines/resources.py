"""The lab's record of what it made (state.json), commands, and the machines' cgroups."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from pathlib import Path

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))


def say(text: str) -> None:
    print(f"machines: {text}", flush=True)


class HostError(RuntimeError):
    """A host command or check failed; the message says which and why."""


def run(
    cmd: list[str],
    check: bool = True,
    quiet: bool = False,
    stdin: str | None = None,
    timeout: float = 120.0,
) -> str | None:
    """Run ``cmd``; its stdout. On failure: HostError with its stderr, or None with check
    off (``quiet``: no stderr shown)."""
    try:
        proc = subprocess.run(
            cmd,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        if check:
            raise HostError(f"{' '.join(cmd)}: {exc}") from None
        return None
    if proc.returncode != 0:
        if check:
            raise HostError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
        return None
    return proc.stdout


def cgroup_dirs(name: str) -> list[Path]:
    """A machine's own cgroup in both hierarchies of the host's hybrid mode."""
    return [root / name for root in CGROUP_ROOTS]


def cgroup_pids(name: str) -> list[int]:
    """Every process in the machine's cgroups, nested ones included."""
    pids: set[int] = set()
    for top in cgroup_dirs(name):
        if not top.is_dir():
            continue
        for procs in [top / "cgroup.procs", *top.rglob("*/cgroup.procs")]:
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except OSError:
                continue
    return sorted(pids)


class State:
    """Resources in the order they were made, each ``{"owner", "kind", "name"}``: owner is a
    machine's name or "lab". Saved at every change, so a crash leaves a true record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()  # machines boot side by side
        self.data: dict = {"spec": None, "resources": []}
        if path.exists():
            self.data = json.loads(path.read_text(encoding="utf-8"))

    @property
    def resources(self) -> list[dict]:
        return list(self.data["resources"])

    def spec(self) -> dict | None:
        return self.data.get("spec")

    def load(self, lab: object) -> None:
        if self.data.get("spec") is None:
            self.data["spec"] = {k: getattr(lab, k) for k in ("prefix", "bridge", "subnet")}
            self.save()

    def machines(self) -> set[str]:
        return {r["owner"] for r in self.data["resources"] if r["owner"] != "lab"}

    def has(self, owner: str, kind: str, name: str) -> bool:
        return {"owner": owner, "kind": kind, "name": name} in self.data["resources"]

    def add(self, owner: str, kind: str, name: str) -> None:
        with self.lock:
            if not self.has(owner, kind, name):
                self.data["resources"].append({"owner": owner, "kind": kind, "name": name})
                self.save()

    def drop(self, resource: dict) -> None:
        with self.lock:
            if resource in self.data["resources"]:
                self.data["resources"].remove(resource)
                self.save()

    def save(self) -> None:
        if not self.path.parent.is_dir():  # the lab's directory itself was just removed
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return ""


def write(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write ``text`` if the file differs; True when it changed."""
    if path.exists() and not path.is_symlink() and read_text(path) == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink():
            path.unlink()
    tmp = path.with_name(path.name + ".hafleet-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True
