# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: agents
short_description: The members of a live hafleet cluster as an inventory
description:
  - Asks a running hafleet agent for the cluster's members (C(GET /v1/members)) and makes a
    host of each, named after its node id.
  - Each host gets its role, health, weight and host metrics as host variables
    (C(hafleet_role), C(hafleet_healthy), C(hafleet_draining), C(hafleet_maintenance),
    C(hafleet_weight),
    C(hafleet_metrics), the addresses C(hafleet_raft_addr), C(hafleet_api_addr),
    C(hafleet_service_addr), and C(hafleet_cluster), C(hafleet_cluster_id)), and
    C(ansible_host) set to the host part of its API address.
  - Hosts are grouped by role - C(<group_prefix>leader), C(<group_prefix>voter),
    C(<group_prefix>learner) - and all are in C(<group_prefix>members).
  - Everything that comes from the agents is marked unsafe, so it is never templated.
  - Reads files whose names end in C(.hafleet.yml) or C(.hafleet.yaml).
author: hafleet maintainers (@hafleet)
version_added: 0.1.0
extends_documentation_fragment:
  - ansible.builtin.constructed
options:
  plugin:
    description: The name of this plugin; it makes the file one of this plugin's.
    type: str
    required: true
    choices: [hafleet.cluster.agents]
  api_urls:
    description:
      - Base URLs of agents' HTTP APIs, for example V(http://10.77.0.11:7480); asked in order
        until one answers.
      - If not set, the environment variable E(HAFLEET_API_URL) is used.
    type: list
    elements: str
    default: [http://127.0.0.1:7480]
    env:
      - name: HAFLEET_API_URL
  api_token:
    description:
      - The API token. Prefer O(api_token_file), or an encrypted value.
      - If not set, the environment variable E(HAFLEET_API_TOKEN) is used.
    type: str
    env:
      - name: HAFLEET_API_TOKEN
  api_token_file:
    description:
      - A file on the controller holding the API token.
      - If not set, the environment variable E(HAFLEET_API_TOKEN_FILE) is used (or
        E(HAFLEET_TOKEN_FILE), an older name).
    type: path
    env:
      - name: HAFLEET_TOKEN_FILE
      - name: HAFLEET_API_TOKEN_FILE
  api_timeout:
    description: Seconds to wait for each answer.
    type: float
    default: 10
  validate_certs:
    description:
      - Verify the TLS certificate of C(https) URLs - it must chain to O(ca_path) (else to
        the system's CAs) and name the host of the URL - before the token is sent.
      - Set to V(false) only on a test bench.
    type: bool
    default: true
  ca_path:
    description:
      - A PEM file (or a directory of hashed certificates) on the controller holding the CA
        that the agents' certificates chain to, such as the C(ca.crt) of
        C(hafleet-agent ca init). Only these CAs are trusted then.
      - If not set, the environment variable E(HAFLEET_CA_FILE) is used; if neither is set,
        the system's CAs.
    type: path
    env:
      - name: HAFLEET_CA_FILE
  group_prefix:
    description: Prefix of the groups this plugin makes.
    type: str
    default: hafleet_
  set_ansible_host:
    description: Set C(ansible_host) to the host part of each member's API address.
    type: bool
    default: true
notes:
  - Members whose node id is not a valid host name are left out with a warning.
seealso:
  - module: hafleet.cluster.cluster_info
"""

EXAMPLES = r"""
# lab.hafleet.yml: the lab's members, grouped by role
plugin: hafleet.cluster.agents
api_urls:
  - http://10.77.0.11:7480
  - http://10.77.0.12:7480
api_token_file: /var/lib/hafleet-lab/secrets/token

# prod.hafleet.yml: more groups with the constructed features
# plugin: hafleet.cluster.agents
# api_urls: [https://10.0.0.11:7480]
# api_token_file: ~/.hafleet/hafleet/token
# ca_path: ~/.hafleet/hafleet/ca.crt   # the cluster CA (hafleet-agent ca init)
# keyed_groups:
#   - key: "'healthy' if hafleet_healthy else 'unhealthy'"
#     prefix: hafleet
# groups:
#   heavy: hafleet_weight is not none and hafleet_weight < 64
# compose:
#   cpu_count: hafleet_metrics.cpu_count
"""

import re

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

from ansible_collections.hafleet.cluster.plugins.module_utils.api import (
    HafleetAPIClient,
    HafleetAPIError,
    read_token_file,
)
from ansible_collections.hafleet.cluster.plugins.plugin_utils.unsafe import make_unsafe

_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ROLES = ("leader", "voter", "learner")


def host_part(addr):
    """``10.0.0.1`` of ``10.0.0.1:7480``; ``fd00::1`` of ``[fd00::1]:7480``."""
    if not addr:
        return None
    host, sep, _port = addr.rpartition(":")
    if not sep:
        return addr
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "hafleet.cluster.agents"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith((".hafleet.yml", ".hafleet.yaml"))

    def _client(self, url, token):
        return HafleetAPIClient(
            url,
            token=token,
            timeout=self.get_option("api_timeout"),
            validate_certs=self.get_option("validate_certs"),
            ca_path=self.get_option("ca_path"),
        )

    def _token(self):
        token = self.get_option("api_token")
        if not token and self.get_option("api_token_file"):
            token = read_token_file(self.get_option("api_token_file"))
        return token or None

    def _read_cluster(self):
        try:
            token = self._token()
        except (HafleetAPIError, ValueError) as exc:
            raise AnsibleParserError(str(exc)) from exc
        errors = []
        for url in self.get_option("api_urls") or []:
            try:
                client = self._client(url, token)
                status = client.status()
                members = client.members()
            except (HafleetAPIError, ValueError) as exc:
                errors.append(str(exc))
                continue
            return status, members
        raise AnsibleParserError(
            "no hafleet agent answered: " + "; ".join(errors or ["no api_urls"])
        )

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache=cache)
        self._read_config_data(path)
        status, members = self._read_cluster()
        self.populate(status, members)

    def populate(self, status, members):
        prefix = self.get_option("group_prefix")
        strict = self.get_option("strict")
        all_group = self.inventory.add_group(f"{prefix}members")
        for role in _ROLES:
            self.inventory.add_group(f"{prefix}{role}")
        for member in members or []:
            name = str(member.get("id") or "")
            if not _HOST_NAME.match(name):
                self.display.warning(f"hafleet.cluster.agents: skipping member id {name!r}")
                continue
            host = self.inventory.add_host(name, group=all_group)
            role = member.get("role")
            if role in _ROLES:
                self.inventory.add_child(f"{prefix}{role}", host)
            hostvars = {
                "hafleet_role": role,
                "hafleet_healthy": bool(member.get("healthy")),
                "hafleet_draining": bool(member.get("draining")),
                "hafleet_maintenance": bool(member.get("maintenance")),
                "hafleet_weight": member.get("weight"),
                "hafleet_metrics": member.get("metrics") or {},
                "hafleet_raft_addr": member.get("raft_addr"),
                "hafleet_api_addr": member.get("api_addr"),
                "hafleet_service_addr": member.get("service_addr"),
                "hafleet_cluster": status.get("cluster"),
                "hafleet_cluster_id": status.get("cluster_id"),
            }
            if self.get_option("set_ansible_host") and member.get("api_addr"):
                hostvars["ansible_host"] = host_part(member["api_addr"])
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, make_unsafe(value))
            variables = self.inventory.get_host(host).get_vars()
            self._set_composite_vars(self.get_option("compose"), variables, host, strict=strict)
            self._add_host_to_composed_groups(
                self.get_option("groups"), variables, host, strict=strict
            )
            self._add_host_to_keyed_groups(
                self.get_option("keyed_groups"), variables, host, strict=strict
            )
