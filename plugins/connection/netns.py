# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: netns
short_description: Run tasks inside a network namespace of the controller
description:
  - Runs every command of a task inside a Linux network namespace on the Ansible controller,
    with C(ip netns exec NAMESPACE /bin/sh -c COMMAND). Everything else works as with
    P(ansible.builtin.local#connection). The namespace shares the controller's file systems,
    so files are copied and fetched with plain local copies.
  - The hafleet lab (role P(hafleet.cluster.lab#role)) reaches its nodes with it, so the same
    roles and modules serve lab nodes and real hosts.
  - Needs root (or C(CAP_SYS_ADMIN)) and C(ip) from iproute2 on the controller.
  - As the namespaces share the controller's file systems, host name and machine id, give each
    lab node its own paths (for example C(remote_tmp) and C(ansible_async_dir)) when several
    of them run the same task.
author: hafleet maintainers (@hafleet)
version_added: 0.1.0
options:
  netns_name:
    description:
      - The name of the network namespace to run in, as C(ip netns list) shows it.
      - Defaults to the host's address, that is C(ansible_host), else its inventory name; so
        a lab node named after its namespace needs nothing set. This also holds for a task
        delegated to such a host.
    type: str
    vars:
      - name: ansible_netns_name
  netns_ip_command:
    description:
      - Path of the C(ip) command.
    type: str
    default: ip
    vars:
      - name: ansible_netns_ip_command
    env:
      - name: ANSIBLE_NETNS_IP_COMMAND
  become_success_timeout:
    description:
      - Number of seconds to wait for become to succeed when enabled (as for
        P(ansible.builtin.local#connection)).
      - The default will be used if the configured value is less than 1.
    type: int
    default: 10
    vars:
      - name: ansible_local_become_success_timeout
  become_strip_preamble:
    description:
      - Strip internal become output preceding command execution (as for
        P(ansible.builtin.local#connection)).
    type: bool
    default: true
    vars:
      - name: ansible_local_become_strip_preamble
extends_documentation_fragment:
  - ansible.builtin.connection_pipelining
notes:
  - The remote user is ignored; commands run as the user that runs Ansible, as with the
    local connection.
  - A namespace name is matched exactly; a namespace that does not exist makes every task
    on that host fail with a clear message.
  - Set C(ansible_connection) to this plugin as a host variable (inventory, C(add_host)), not
    as a play variable, so that a task delegated to C(localhost) still runs locally.
seealso:
  - plugin: ansible.builtin.local
    plugin_type: connection
"""

EXAMPLES = r"""
# In an inventory: lab nodes are namespaces of the controller.
# all:
#   children:
#     lab:
#       hosts:
#         hafleet-node1:
#         hafleet-node2:
#       vars:
#         ansible_connection: hafleet.cluster.netns

- name: Facts of a lab node, seen from inside its namespace
  hosts: lab
  gather_facts: true
  tasks:
    - name: Show the node's own address
      ansible.builtin.debug:
        var: ansible_facts['default_ipv4']['address']

- name: Run one task in a namespace named explicitly
  hosts: localhost
  tasks:
    - name: List the addresses inside hafleet-node1
      ansible.builtin.command: ip -brief address
      changed_when: false
      delegate_to: hafleet-node1
      vars:
        ansible_connection: hafleet.cluster.netns
        ansible_netns_name: hafleet-node1
"""

import re
import shlex

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.connection.local import Connection as LocalConnection
from ansible.utils.display import Display

display = Display()

# What iproute2 accepts as a namespace name: a file name in /run/netns.
_NETNS_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@:+-]{0,254}$")


def netns_command(cmd, netns, ip_command="ip"):
    """Wrap a shell command so that it runs inside network namespace ``netns``."""
    if not netns or not _NETNS_NAME.match(netns) or netns in (".", ".."):
        raise AnsibleConnectionFailure(f"not a valid network namespace name: {netns!r}")
    if not isinstance(cmd, str):
        cmd = shlex.join(to_text(part) for part in cmd)
    return " ".join(
        (
            shlex.quote(ip_command),
            "netns",
            "exec",
            shlex.quote(netns),
            "/bin/sh",
            "-c",
            shlex.quote(cmd),
        )
    )


class Connection(LocalConnection):
    """Local connection whose commands run inside a network namespace."""

    transport = "hafleet.cluster.netns"
    has_pipelining = True

    def _netns(self):
        name = self.get_option("netns_name")
        if not name:
            name = self._play_context.remote_addr
        return to_text(name)

    def exec_command(self, cmd, in_data=None, sudoable=True):
        netns = self._netns()
        wrapped = netns_command(cmd, netns, self.get_option("netns_ip_command") or "ip")
        display.vvv(f"NETNS {netns}", host=netns)
        rc, stdout, stderr = super().exec_command(wrapped, in_data=in_data, sudoable=sudoable)
        if rc != 0 and b"Cannot open network namespace" in stderr:
            raise AnsibleConnectionFailure(
                f"network namespace {netns!r} does not exist (ip netns list shows the ones "
                f"that do): {to_text(stderr).strip()}"
            )
        return rc, stdout, stderr
