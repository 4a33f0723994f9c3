"""hack/machines/plan.py, the pure part of the machines lab: names, addresses, the files'
text and the plan of what `up` creates, starts, keeps and removes. Fast, no root."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "hack"))

from machines import plan as P  # noqa: E402


def test_the_default_lab_names_and_addresses() -> None:
    lab = P.Lab(nodes=3, balancers=2)
    lab.check()
    got = [(m.name, m.role, m.index, m.address, m.veth) for m in lab.machines()]
    assert got == [
        ("hafleet-m1", "pool", 1, "10.78.0.11", "hafleet1m1"),
        ("hafleet-m2", "pool", 2, "10.78.0.12", "hafleet1m2"),
        ("hafleet-m3", "pool", 3, "10.78.0.13", "hafleet1m3"),
        ("hafleet-lb1", "balancer", 1, "10.78.0.201", "hafleet1lb1"),
        ("hafleet-lb2", "balancer", 2, "10.78.0.202", "hafleet1lb2"),
    ]
    assert lab.name == "hafleet"
    assert lab.bridge_address == "10.78.0.1"
    assert lab.proxy == "http://10.78.0.1:3142"
    assert lab.nft_table == "hafleet_machines_hafleet1"


def test_another_lab_never_shares_a_name_or_an_address_with_the_default() -> None:
    mine = P.Lab(prefix="hfmx-", bridge="hfmx1", subnet="10.79.9.0/24", nodes=7, balancers=2)
    mine.check()
    default = P.Lab(nodes=7, balancers=2)
    for attr in ("name", "address", "veth"):
        ours = {getattr(m, attr) for m in mine.machines()}
        theirs = {getattr(m, attr) for m in default.machines()}
        assert not ours & theirs, attr
    assert mine.name == "hfmx" and mine.bridge_address == "10.79.9.1"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prefix": "Hf-"}, "prefix"),
        ({"prefix": "hf_"}, "prefix"),
        ({"bridge": "br-0"}, "bridge"),
        ({"bridge": "b" * 16}, "bridge"),
        ({"subnet": "10.79.9.1/24"}, "host bits"),
        ({"subnet": "10.0.0.0/8"}, "/16 to /28"),
        ({"subnet": "10.79.9.0/29"}, "/16 to /28"),
        ({"nodes": -1}, "counts"),
        ({"nodes": 191}, "overlap"),
        ({"subnet": "10.79.9.0/25"}, "do not fit"),
        ({"pool_start": 1}, "do not fit"),
        ({"balancers": 55}, "do not fit"),
        ({"bridge": "abcdefghijklm"}, "longer than 15"),
    ],
)
def test_a_lab_that_cannot_be_made_is_refused_with_the_reason(changes, message) -> None:
    with pytest.raises(P.PlanError, match=message):
        P.Lab(**changes).check()


def test_the_edges_that_fit() -> None:
    P.Lab(nodes=190, balancers=54).check()  # .11-.200 and .201-.254
    P.Lab(subnet="10.79.9.0/25", nodes=5, balancers=0).check()
    P.Lab(nodes=0, balancers=0).check()
    P.Lab(bridge="abcdefghijkl", nodes=9, balancers=9).check()  # abcdefghijkllb9: 15


def test_plan_creates_starts_keeps_and_removes() -> None:
    lab = P.Lab(prefix="hfmx-", nodes=3, balancers=1)
    recorded = {"hfmx-m1", "hfmx-m2", "hfmx-m4", "hfmx-m10", "hfmx-lb1"}
    result = P.plan(lab, recorded, running={"hfmx-m1", "hfmx-lb1", "hfmx-m4"})
    assert [m.name for m in result.create] == ["hfmx-m3"]
    assert [m.name for m in result.start] == ["hfmx-m2"]
    assert [m.name for m in result.keep] == ["hfmx-m1", "hfmx-lb1"]
    assert result.remove == ["hfmx-m4", "hfmx-m10"]  # natural order, not m10 before m4
    assert result.changes
    assert result.summary() == (
        "create hfmx-m3; start hfmx-m2; remove hfmx-m4, hfmx-m10; keep hfmx-m1, hfmx-lb1"
    )


def test_plan_of_a_lab_that_is_all_there_changes_nothing() -> None:
    lab = P.Lab(nodes=2, balancers=1)
    names = {m.name for m in lab.machines()}
    result = P.plan(lab, names, running=names)
    assert not result.changes
    assert result.summary() == "nothing to change: 3 machine(s) running"
    fresh = P.plan(lab, set(), running=set())
    assert [m.name for m in fresh.create] == ["hafleet-m1", "hafleet-m2", "hafleet-lb1"]
    assert fresh.summary() == "create hafleet-m1, hafleet-m2, hafleet-lb1"


def test_hosts_yml_groups_and_connection_vars() -> None:
    lab = P.Lab(prefix="hfmx-", bridge="hfmx1", subnet="10.79.9.0/24", nodes=2, balancers=1)
    text = P.hosts_yml(lab, Path("/o/id_ed25519"), Path("/o/known_hosts"))
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == [
        "hafleet_machines:",
        "  children:",
        "    hafleet_pool:",
        "      hosts:",
        "        hfmx-m1:",
        "          ansible_host: 10.79.9.11",
        "        hfmx-m2:",
        "          ansible_host: 10.79.9.12",
        "      vars:",
        "        agent_demo_service: true",
        "    hafleet_balancer:",
        "      hosts:",
        "        hfmx-lb1:",
        "          ansible_host: 10.79.9.201",
        "  vars:",
        "    ansible_user: deploy",
        "    ansible_become: true",
        "    ansible_python_interpreter: /usr/bin/python3",
        "    ansible_ssh_private_key_file: /o/id_ed25519",
        "    ansible_ssh_common_args: >-",
        "      -o StrictHostKeyChecking=yes",
        "      -o UserKnownHostsFile=/o/known_hosts",
        "    hafleet_machines_apt_proxy: http://10.79.9.1:3142",
    ]


def test_hosts_yml_with_no_balancer_has_an_empty_group() -> None:
    text = P.hosts_yml(P.Lab(nodes=1, balancers=0), Path("/k"), Path("/kh"))
    assert "    hafleet_balancer:\n      hosts: {}\n" in text


def test_known_hosts_names_each_machine_by_name_and_address() -> None:
    lab = P.Lab(nodes=1, balancers=1)
    keys = {
        "hafleet-m1": ["ssh-ed25519 AAAAC3one root@x", "ecdsa-sha2-nistp256 AAAAE2two"],
        "hafleet-lb1": ["ssh-ed25519 AAAAC3three"],
        "hafleet-m9": ["ssh-ed25519 AAAAnotinthelab"],
    }
    assert P.known_hosts(lab, keys) == (
        "hafleet-m1,10.78.0.11 ssh-ed25519 AAAAC3one\n"
        "hafleet-m1,10.78.0.11 ecdsa-sha2-nistp256 AAAAE2two\n"
        "hafleet-lb1,10.78.0.201 ssh-ed25519 AAAAC3three\n"
    )
    assert P.known_hosts(lab, {}) == ""


def test_etc_hosts_lists_the_machine_itself_and_the_whole_lab() -> None:
    lab = P.Lab(prefix="hfmx-", bridge="hfmx1", subnet="10.79.9.0/24", nodes=2, balancers=1)
    text = P.etc_hosts(lab, lab.machines()[1])
    assert text.splitlines() == [
        "127.0.0.1\tlocalhost",
        "127.0.1.1\thfmx-m2",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "10.79.9.1\thfmx-host",
        "10.79.9.11\thfmx-m1",
        "10.79.9.12\thfmx-m2",
        "10.79.9.201\thfmx-lb1",
    ]


def test_the_package_cache_binds_only_the_bridge_address() -> None:
    lab = P.Lab(prefix="hfmx-", bridge="hfmx1", subnet="10.79.9.0/24")
    conf = P.acng_conf(lab, Path("/c/apt/hfmx"), Path("/s/acng")).splitlines()
    assert "BindAddress: 10.79.9.1" in conf
    assert "Port: 3142" in conf
    assert "CacheDir: /c/apt/hfmx" in conf
    assert "PidFile: /s/acng/acng.pid" in conf and "SocketPath: /s/acng/acng.socket" in conf
    assert any(line.startswith("Remap-debrep:") and "backends_debian" in line for line in conf)
    assert 'Acquire::http::Proxy "http://10.79.9.1:3142";' in P.apt_proxy_conf(lab)


DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security/
Suites: bookworm-security
Components: main
"""


def test_mirrors_come_from_the_hosts_deb822_sources() -> None:
    found = P.mirrors(DEB822)
    assert found == {
        "debian": "http://mirror.example/debian/",
        "security": "http://mirror.example/debian-security/",
    }
    assert P.guest_sources(found).splitlines() == [
        "deb http://mirror.example/debian/ bookworm main",
        "deb http://mirror.example/debian/ bookworm-updates main",
        "deb http://mirror.example/debian-security/ bookworm-security main",
    ]
    assert P.mirrors("") == {}
    assert "deb http://deb.debian.org/debian/ bookworm main" in P.guest_sources({})


def test_the_rootfs_key_names_its_suite_and_changes_with_its_content(monkeypatch) -> None:
    key = P.rootfs_key()
    assert key.startswith("bookworm-") and len(key) == len("bookworm-") + 12
    monkeypatch.setattr(P, "ROOTFS_REVISION", P.ROOTFS_REVISION + 1)
    assert P.rootfs_key() != key


def test_each_lab_has_its_own_out_directory() -> None:
    assert P.Lab().out_name == "machines"
    assert P.Lab(prefix="hfmx-").out_name == "machines-hfmx"
    assert P.Lab(prefix="hafleet").out_name == "machines"  # the same lab name, hafleet


def test_state_records_before_making_and_reads_back(tmp_path: Path) -> None:
    from machines.resources import State

    path = tmp_path / "lab" / "state.json"
    path.parent.mkdir()
    state = State(path)
    assert state.spec() is None and state.resources == []
    state.load(P.Lab(prefix="hfmx-", bridge="hfmx1", subnet="10.79.9.0/24"))
    state.load(P.Lab())  # the first spec stays: a lab is not redefined under its state
    state.add("lab", "bridge", "hfmx1")
    state.add("hfmx-m1", "netns", "hfmx-m1")
    state.add("hfmx-m1", "netns", "hfmx-m1")  # once
    state.add("hfmx-m2", "mount", "/x/merged")
    again = State(path)
    assert again.spec() == {"prefix": "hfmx-", "bridge": "hfmx1", "subnet": "10.79.9.0/24"}
    assert [(r["owner"], r["kind"], r["name"]) for r in again.resources] == [
        ("lab", "bridge", "hfmx1"),
        ("hfmx-m1", "netns", "hfmx-m1"),
        ("hfmx-m2", "mount", "/x/merged"),
    ]
    assert again.machines() == {"hfmx-m1", "hfmx-m2"}
    assert again.has("hfmx-m1", "netns", "hfmx-m1")
    assert not again.has("hfmx-m2", "netns", "hfmx-m1")
    again.drop({"owner": "hfmx-m1", "kind": "netns", "name": "hfmx-m1"})
    assert State(path).machines() == {"hfmx-m2"}
    path.unlink()
    path.parent.rmdir()  # down removed the lab's directory: dropping the rest writes nothing
    again.drop(again.resources[0])
    assert not path.parent.exists()


def test_write_reports_a_change_only_when_the_text_differs(tmp_path: Path) -> None:
    from machines.resources import read_text, write

    target = tmp_path / "etc" / "hostname"
    assert write(target, "m1\n", mode=0o600)
    assert target.stat().st_mode & 0o777 == 0o600
    assert not write(target, "m1\n")
    assert write(target, "m2\n") and read_text(target) == "m2\n"
    link = tmp_path / "machine-id"
    link.symlink_to(target)
    assert write(link, "m2\n")  # a link is replaced by a file of its own, never written through
    assert not link.is_symlink() and read_text(target) == "m2\n"
    assert read_text(tmp_path / "missing") == ""


def test_nft_rules_drop_routing_to_and_from_the_bridge_but_not_within_it() -> None:
    lab = P.Lab(prefix="hfmx-", bridge="hfmx1", subnet="10.79.9.0/24")
    rules = [line.strip() for line in P.nft_rules(lab).splitlines()]
    assert rules[0] == "table inet hafleet_machines_hfmx1 {"
    assert f'comment "{P.NFT_MARK}"' in rules  # how up sees that the table is current
    assert "type filter hook forward priority -10; policy accept;" in rules
    drops = [line for line in rules if line.endswith("drop")]
    # Bridged frames cross the forward hook with the bridge as input and output (br_netfilter):
    # a plain `iifname "hfmx1" drop` cut the machines off from each other.
    assert drops == [
        'iifname "hfmx1" oifname != "hfmx1" drop',
        'oifname "hfmx1" iifname != "hfmx1" drop',
    ]
