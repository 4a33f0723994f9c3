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
    type: path
  api_timeout:
    description: Seconds to wait for each answer of the API.
    type: float
    default: 10
  validate_certs:
    description: Verify the TLS certificate when O(api_url) uses C(https).
    type: bool
    default: true
  ca_path:
    description: A CA bundle to verify the API's certificate with.
    type: path
"""
