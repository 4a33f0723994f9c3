# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The options of plugins/module_utils/api.py's api_argument_spec().
    DOCUMENTATION = r"""
options:
  api_url:
    description:
      - Base URL of an agent's HTTP API, for example V(http://10.77.0.11:7480).
      - Any member will do; writes are sent to the leader.
      - If not set, the environment variable E(HAFLEET_API_URL) is used.
    type: str
    default: http://127.0.0.1:7480
  api_token:
    description:
      - "The API token, sent as C(Authorization: Bearer TOKEN)."
      - Mutually exclusive with O(api_token_file). If neither is set, the environment
        variables E(HAFLEET_API_TOKEN) and E(HAFLEET_API_TOKEN_FILE) are used.
    type: str
  api_token_file:
    description:
      - A file on the host the module runs on that holds the API token, such as the agent's
        own token file. The secret then never travels in the module's arguments.
      - If not set (nor O(api_token)), the environment variable E(HAFLEET_API_TOKEN_FILE) is
        used, or E(HAFLEET_TOKEN_FILE), an older name. The C(hafleet-agent) CLI reads the
        same variables (E(HAFLEET_API_URL), E(HAFLEET_API_TOKEN), E(HAFLEET_API_TOKEN_FILE),
        E(HAFLEET_CA_FILE)).
    type: path
  api_timeout:
    description: Seconds to wait for each answer of the API, above 0 and up to 3600.
    type: float
    default: 10
  validate_certs:
    description:
      - When O(api_url) uses C(https), verify the agent's TLS certificate - it must chain to
        O(ca_path) (else to the system's CAs) and name the host of the URL - before anything,
        the token included, is sent.
      - Set to V(false) only on a test bench; the connection is then encrypted but not
        authenticated.
    type: bool
    default: true
  ca_path:
    description:
      - A PEM file (or a directory of hashed certificates) on the host the module runs on,
        holding the CA that the agents' certificates chain to, such as the C(ca.crt) of
        C(hafleet-agent ca init). Only these CAs are trusted then.
      - If not set, the environment variable E(HAFLEET_CA_FILE) is used; if neither is set,
        the system's CAs.
    type: path
"""

    # The option of a module that asks further agents (FALLBACK_ARGUMENT_SPEC).
    FALLBACK = r"""
options:
  fallback_api_urls:
    description:
      - More agents to ask, in order, when O(api_url) does not answer.
    type: list
    elements: str
    default: []
"""
