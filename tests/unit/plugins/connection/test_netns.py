# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""hafleet.cluster.netns: the command wrapping and the options (no namespace needed)."""

from __future__ import annotations

import shlex
from io import StringIO
from unittest import mock

import pytest
from ansible.errors import AnsibleConnectionFailure
from ansible.playbook.play_context import PlayContext
from ansible.plugins.connection.local import Connection as LocalConnection
from ansible.plugins.loader import connection_loader

from ansible_collections.hafleet.cluster.plugins.connection.netns import netns_command


def test_the_command_runs_in_the_namespace_through_sh():
    wrapped = netns_command("echo 'a b' && id", "hafleet-node1")

    argv = shlex.split(wrapped)
    assert argv == ["ip", "netns", "exec", "hafleet-node1", "/bin/sh", "-c", "echo 'a b' && id"]


def test_an_argv_list_is_joined_safely():
    wrapped = netns_command(["printf", "%s\\n", "x; rm -rf /"], "n1", ip_command="/sbin/ip")

    argv = shlex.split(wrapped)
    assert argv[:6] == ["/sbin/ip", "netns", "exec", "n1", "/bin/sh", "-c"]
    assert shlex.split(argv[6]) == ["printf", "%s\\n", "x; rm -rf /"]


@pytest.mark.parametrize("name", ["", "..", "a/b", "-n", "a b", "x" * 300])
def test_bad_namespace_names_are_refused(name):
    with pytest.raises(AnsibleConnectionFailure):
        netns_command("true", name)


def make_connection(remote_addr="n1", **variables):
    play_context = PlayContext()
    play_context.remote_addr = remote_addr
    conn = connection_loader.get("hafleet.cluster.netns", play_context, StringIO())
    conn.set_options(var_options=variables)
    return conn


def test_the_namespace_defaults_to_the_host_address():
    # remote_addr is ansible_host, else the inventory name (the delegated host's, when delegating).
    conn = make_connection(remote_addr="hafleet-node3")
    with mock.patch.object(LocalConnection, "exec_command", return_value=(0, b"ok", b"")) as local:
        assert conn.exec_command("hostname") == (0, b"ok", b"")
    sent = local.call_args[0][0]
    assert shlex.split(sent)[:4] == ["ip", "netns", "exec", "hafleet-node3"]


def test_ansible_netns_name_wins():
    conn = make_connection(remote_addr="web1", ansible_netns_name="lab-ns7")
    with mock.patch.object(LocalConnection, "exec_command", return_value=(0, b"", b"")) as local:
        conn.exec_command("true", in_data=b"data", sudoable=False)
    assert shlex.split(local.call_args[0][0])[3] == "lab-ns7"
    assert local.call_args[1] == {"in_data": b"data", "sudoable": False}


def test_a_missing_namespace_is_a_connection_failure():
    conn = make_connection(remote_addr="gone")
    answer = (1, b"", b'Cannot open network namespace "gone": No such file or directory')
    with mock.patch.object(LocalConnection, "exec_command", return_value=answer):
        with pytest.raises(AnsibleConnectionFailure, match="does not exist"):
            conn.exec_command("true")


def test_the_local_options_are_there():
    conn = make_connection()
    # core's local connection reads these; without them in DOCUMENTATION get_option fails.
    assert conn.get_option("become_success_timeout") == 10
    assert conn.get_option("become_strip_preamble") is True
    assert conn.get_option("pipelining") in (True, False)
    assert conn.has_pipelining is True
