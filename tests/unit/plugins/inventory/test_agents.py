# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.agents against a stand-in cluster: hosts, host vars, groups, unsafe data."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import inventory_loader
from ansible.template import Templar

from ansible_collections.hafleet.cluster.plugins.inventory.agents import host_part
from ansible_collections.hafleet.cluster.tests.unit.plugins.fake_cluster import TOKEN, FakeCluster


@pytest.fixture(name="cluster")
def cluster_fixture():
    with FakeCluster(ids=("n1", "n2", "n3"), leader="n2") as cluster:
        yield cluster


def load(tmp_path, text, name="lab.hafleet.yml"):
    path = tmp_path / name
    path.write_text(text)
    plugin = inventory_loader.get("hafleet.cluster.agents")
    inventory = InventoryData()
    loader = DataLoader()
    assert plugin.verify_file(str(path))
    plugin.parse(inventory, loader, str(path), cache=False)
    return inventory


def config(cluster, *nodes, extra=""):
    urls = ", ".join(cluster.url(n) for n in nodes or ("n1",))
    return f"plugin: hafleet.cluster.agents\napi_urls: [{urls}]\napi_token: {TOKEN}\n{extra}"


def test_members_become_hosts_with_their_live_data(cluster, tmp_path):
    inventory = load(tmp_path, config(cluster))

    assert set(inventory.hosts) == {"n1", "n2", "n3"}
    hostvars = inventory.get_host("n3").get_vars()
    assert hostvars["hafleet_role"] == "voter"
    assert hostvars["hafleet_weight"] == 128
    assert hostvars["hafleet_healthy"] is True
    assert hostvars["hafleet_draining"] is False
    assert hostvars["hafleet_maintenance"] is False
    cluster.members["n2"]["maintenance"] = True
    assert load(tmp_path, config(cluster)).get_host("n2").get_vars()["hafleet_maintenance"] is True
    assert hostvars["hafleet_metrics"]["cpu_count"] == 2
    assert hostvars["hafleet_api_addr"] == cluster.api_addr("n3")
    assert hostvars["hafleet_cluster"] == "test"
    assert hostvars["hafleet_cluster_id"] == "test-1234"
    assert hostvars["ansible_host"] == "127.0.0.1"


def test_hosts_are_grouped_by_role(cluster, tmp_path):
    cluster.add_node("n4", role="learner")
    inventory = load(tmp_path, config(cluster))

    def members(group):
        return sorted(h.name for h in inventory.groups[group].get_hosts())

    assert members("hafleet_leader") == ["n2"]
    assert members("hafleet_voter") == ["n1", "n3"]
    assert members("hafleet_learner") == ["n4"]
    assert members("hafleet_members") == ["n1", "n2", "n3", "n4"]


def test_live_data_is_never_templated(cluster, tmp_path):
    evil = "{{ lookup('ansible.builtin.pipe', 'touch /tmp/hafleet-pwned') }}"
    cluster.members["n1"]["metrics"] = {"note": evil}
    cluster.members["n1"]["service_addr"] = evil
    inventory = load(tmp_path, config(cluster))

    hostvars = inventory.get_host("n1").get_vars()
    templar = Templar(loader=DataLoader(), variables=hostvars)
    assert templar.template(hostvars["hafleet_service_addr"]) == evil
    assert templar.template(hostvars["hafleet_metrics"])["note"] == evil


def test_the_constructed_features_work(cluster, tmp_path):
    extra = (
        "keyed_groups:\n"
        "  - key: \"'healthy' if hafleet_healthy else 'sick'\"\n"
        "    prefix: state\n"
        "groups:\n"
        "  busy: hafleet_metrics.cpu_percent > 5\n"
        "compose:\n"
        "  cores: hafleet_metrics.cpu_count\n"
        "group_prefix: fleet_\n"
    )
    inventory = load(tmp_path, config(cluster, extra=extra))

    assert sorted(h.name for h in inventory.groups["state_healthy"].get_hosts()) == [
        "n1",
        "n2",
        "n3",
    ]
    assert sorted(h.name for h in inventory.groups["busy"].get_hosts()) == ["n1", "n2", "n3"]
    assert inventory.get_host("n2").get_vars()["cores"] == 2
    assert "fleet_leader" in inventory.groups


def test_the_next_url_is_tried(cluster, tmp_path):
    cluster.down.add("n1")
    inventory = load(tmp_path, config(cluster, "n1", "n3"))

    assert set(inventory.hosts) == {"n1", "n2", "n3"}


def test_no_answer_is_a_parser_error(cluster, tmp_path):
    cluster.down.update({"n1", "n2"})
    with pytest.raises(AnsibleParserError, match="no hafleet agent answered"):
        load(tmp_path, config(cluster, "n1", "n2"))


def test_the_tls_options_reach_the_client(cluster, tmp_path):
    """O(ca_path) is passed to the client: one that cannot be loaded fails every URL."""
    missing = tmp_path / "missing-ca.pem"
    with pytest.raises(AnsibleParserError, match="cannot load the CA file .*missing-ca.pem"):
        load(tmp_path, config(cluster, extra=f"ca_path: {missing}\n"))
    inventory = load(tmp_path, config(cluster, extra="validate_certs: false\n"))
    assert set(inventory.hosts) == {"n1", "n2", "n3"}


def test_only_hafleet_files_are_read(tmp_path):
    plugin = inventory_loader.get("hafleet.cluster.agents")
    other = tmp_path / "hosts.yml"
    other.write_text("plugin: hafleet.cluster.agents\n")
    assert not plugin.verify_file(str(other))


def test_bad_member_ids_are_left_out(cluster, tmp_path):
    cluster.members["bad id!"] = dict(cluster.members["n1"], id="bad id!")
    inventory = load(tmp_path, config(cluster))

    assert "bad id!" not in inventory.hosts


@pytest.mark.parametrize(
    ("addr", "host"),
    [("10.0.0.1:7480", "10.0.0.1"), ("[fd00::1]:7480", "fd00::1"), ("web1", "web1"), (None, None)],
)
def test_host_part(addr, host):
    assert host_part(addr) == host
