"""HAProxy with least privilege (docs/security.md, "Least privilege"): the rendered ``user``,
``group``, ``chroot`` and admin-socket mode/group lines, their checks, and a real HAProxy started
the way the balancer role's unit starts it (as root) that chroots and switches user, loads its
server state across a reload, and answers on its admin socket to a process of the socket's group
only - the syncer needs no root."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from balancer_lab import HAPROXY

from hafleet_agent.balancer import process
from hafleet_agent.balancer.haproxy_config import ConfigError, ServerLine, Settings, render

# The test's own interpreter may live where other users cannot read (a pyenv under /root).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


def settings(**kw) -> Settings:
    base = dict(
        backend="app",
        bind=["127.0.0.1:8080"],
        socket_path="/var/lib/hafleet-balancer/admin.sock",
        state_file="/var/lib/hafleet-balancer/state/server-state",
    )
    return Settings(**{**base, **kw})


def global_section(text: str) -> list[str]:
    section = text.split("\nglobal\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in section.splitlines()]


def test_render_user_group_chroot_and_socket_group() -> None:
    lines = global_section(
        render(
            settings(
                user="haproxy",
                group="haproxy",
                chroot="/var/lib/haproxy",
                socket_mode="660",
                socket_group="hafleet-balancer",
            )
        )
    )
    assert lines[0] == "chroot /var/lib/haproxy"
    assert (
        "stats socket /var/lib/hafleet-balancer/admin.sock mode 660 group hafleet-balancer"
        " level admin expose-fd listeners"
    ) in lines
    assert "user haproxy" in lines and "group haproxy" in lines


def test_render_without_them_is_as_before() -> None:
    lines = global_section(render(settings()))
    assert not [ln for ln in lines if ln.split()[0] in ("chroot", "user", "group")]
    assert (
        "stats socket /var/lib/hafleet-balancer/admin.sock mode 600 level admin expose-fd listeners"
    ) in lines


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"user": "Root"}, "user"),
        ({"user": "a b"}, "user"),
        ({"group": "x;y"}, "group"),
        ({"socket_group": "-g"}, "socket group"),
        ({"socket_mode": "66x"}, "octal"),
        ({"socket_mode": "6600"}, "octal"),
        ({"chroot": "var/lib/haproxy"}, "chroot"),
        ({"chroot": "/var/lib/ha proxy"}, "chroot"),
        ({"servers": [ServerLine("n1", "10.0.0.1 backup", 80, 1, 1)]}, "not an address"),
        ({"servers": [ServerLine("n1", "10.0.0.1\n    lua-load x", 80, 1, 1)]}, "not an address"),
    ],
)
def test_render_refuses_bad_privilege_settings(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        render(settings(**change))


def _account(user: str, group: str) -> tuple[pwd.struct_passwd, grp.struct_group]:
    try:
        return pwd.getpwnam(user), grp.getgrnam(group)
    except KeyError:
        pytest.skip(f"no {user} user or {group} group on this machine")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory that other users may traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="hfsec-hp-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _ask_as(uid: int, gid: int, sock: str) -> subprocess.CompletedProcess:
    """``show info`` on the admin socket from a process of that uid and gid only."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "s.settimeout(5)\n"
        "s.connect(sys.argv[1])\n"
        "s.sendall(b'show info\\n')\n"
        "print(s.recv(65536).decode())\n"
    )
    return subprocess.run(
        [SYSTEM_PYTHON, "-c", code, sock],
        user=uid,
        group=gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.geteuid() != 0, reason="HAProxy must start as root to switch user")
def test_haproxy_chroots_switches_user_and_shares_its_socket_by_group(shared_dir: Path) -> None:
    haproxy_user, haproxy_group = _account("haproxy", "haproxy")
    nobody, nogroup = _account("nobody", "nogroup")
    chroot = shared_dir / "chroot"
    chroot.mkdir(mode=0o755)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = {
        "backend": "app",
        "bind": [f"127.0.0.1:{port}"],
        "socket": str(shared_dir / "admin.sock"),
        "state_file": str(shared_dir / "server-state"),
        "strategy": "weighted",
        "user": "haproxy",
        "group": "haproxy",
        "chroot": str(chroot),
        "socket_mode": "660",
        "socket_group": "nogroup",
    }
    settings_file = shared_dir / "haproxy.json"
    settings_file.write_text(json.dumps(conf))
    config, pidfile = str(shared_dir / "haproxy.cfg"), str(shared_dir / "haproxy.pid")
    try:
        started = process.start(str(settings_file), config, pidfile, HAPROXY)
        assert started.get("state") == "started", started
        for pid in process.read_pids(pidfile):
            status = Path(f"/proc/{pid}/status").read_text()
            uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1:]
            gids = next(ln for ln in status.splitlines() if ln.startswith("Gid:")).split()[1:]
            assert set(uids) == {str(haproxy_user.pw_uid)}, status
            assert set(gids) == {str(haproxy_group.gr_gid)}, status
            assert os.readlink(f"/proc/{pid}/root") == str(chroot)
        st = os.stat(conf["socket"])
        assert (st.st_mode & 0o777, st.st_gid) == (0o660, nogroup.gr_gid)

        # a process of the socket's group speaks to it; the same user in another group cannot
        allowed = _ask_as(nobody.pw_uid, nogroup.gr_gid, conf["socket"])
        assert allowed.returncode == 0 and "Pid:" in allowed.stdout, allowed.stderr
        refused = _ask_as(nobody.pw_uid, haproxy_group.gr_gid, conf["socket"])
        assert refused.returncode != 0 and "PermissionError" in refused.stderr, refused

        # the state file is read before the chroot: runtime servers survive a reload
        add = "add server app/n1 127.0.0.1:9 id 1001 weight 42"
        assert "New server registered" in process.runtime_command(conf["socket"], add)
        reloaded = process.reload(str(settings_file), config, pidfile, HAPROXY)
        assert reloaded.get("state") == "reloaded", reloaded
        assert [(s["name"], s["weight"]) for s in process.servers(conf)] == [("n1", 42)]
    finally:
        process.stop(pidfile, 5.0)
