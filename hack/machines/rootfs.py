"""The shared rootfs of the machines: debootstrap once through the lab's package cache, made
anonymous (each machine gets its own identity), kept as a lower directory and a tarball."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

from . import plan as P
from .resources import HostError, read_text, run, say, write

HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


def build(cache: Path, proxy: str) -> Path:
    """The shared lower directory, built once (debootstrap through the package cache) and
    kept with its tarball; a rebuild of the directory from the tarball takes seconds."""
    root = cache / "rootfs"
    root.mkdir(parents=True, exist_ok=True)
    key = P.rootfs_key()
    lower, tarball = root / key, root / f"{key}.tar"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (lower / ".hafleet-rootfs").exists():
            return lower
        tmp = root / f"{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        started = time.monotonic()
        try:
            if tarball.exists():
                say(f"rootfs: unpacking {tarball}")
                tmp.mkdir()
                run(
                    ["tar", "-C", str(tmp), "--numeric-owner", "-xpf", str(tarball)],
                    timeout=600,
                )
            else:
                debootstrap(tmp, proxy)
                customise_rootfs(tmp)
                say(f"rootfs: packing {tarball}")
                run(
                    ["tar", "-C", str(tmp), "--numeric-owner", "-cpf", f"{tarball}.tmp", "."],
                    timeout=600,
                )
                os.replace(f"{tarball}.tmp", tarball)
            (tmp / ".hafleet-rootfs").write_text(key + "\n")
            os.replace(tmp, lower)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        say(f"rootfs: {lower} ready in {time.monotonic() - started:.0f}s")
        return lower


def debootstrap(target: Path, proxy: str) -> None:
    found = P.mirrors(read_text(HOST_SOURCES))
    mirror = found.get("debian", P.DEFAULT_MIRRORS["debian"])
    say(
        f"rootfs: debootstrap {P.SUITE} minbase into {target} through {proxy} "
        "(about 2 minutes, once)"
    )
    env = dict(os.environ, http_proxy=proxy, DEBIAN_FRONTEND="noninteractive")
    cmd = [
        "debootstrap",
        "--variant=minbase",
        "--include=" + ",".join(P.PACKAGES),
        P.SUITE,
        str(target),
        mirror,
    ]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    last = 0.0
    for line in proc.stdout:  # debootstrap's own progress, one line in 5 s at most
        if time.monotonic() - last > 5 or not line.startswith("I: "):
            say("rootfs: " + line.rstrip())
            last = time.monotonic()
    if proc.wait(timeout=900) != 0:
        raise HostError(f"debootstrap failed (exit {proc.returncode}); see above")


def customise_rootfs(root: Path) -> None:
    """Once, in the shared lower directory: no identity of its own (machine-id empty, no ssh
    host keys: each machine gets its own), the user with passwordless sudo, sshd keys-only, the
    host's mirrors as apt sources, no resolver (the guests reach only the lab host)."""
    say("rootfs: customising (user, sudo, sshd, apt sources, no identity)")
    chroot = ["chroot", str(root)]
    run([*chroot, "useradd", "--create-home", "--shell", "/bin/bash", P.USER])
    write(root / "etc/sudoers.d" / P.USER, f"{P.USER} ALL=(ALL) NOPASSWD:ALL\n", mode=0o440)
    write(
        root / "etc/ssh/sshd_config.d/hafleet.conf",
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n",
    )
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    write(root / "etc/machine-id", "")
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        dbus_id.unlink()
    dbus_id.symlink_to("/etc/machine-id")
    sources = P.guest_sources(P.mirrors(read_text(HOST_SOURCES)))
    write(root / "etc/apt/sources.list", sources)
    write(root / "etc/resolv.conf", "")
    write(root / "etc/hostname", "")
    run([*chroot, "apt-get", "clean"])
    wants = root / "etc/systemd/system/multi-user.target.wants/ssh.service"
    if not wants.exists() and not wants.is_symlink():
        wants.symlink_to("/lib/systemd/system/ssh.service")
