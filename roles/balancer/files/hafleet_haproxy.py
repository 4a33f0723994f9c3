# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HAProxy's process and configuration for the hafleet balancer role: the agent's
``hafleet_agent.balancer.haproxy_cli`` (run with the agent's virtualenv Python)."""

import sys

from hafleet_agent.balancer.haproxy_cli import main

if __name__ == "__main__":
    sys.exit(main())
