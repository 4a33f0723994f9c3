# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # What the attributes mean; every module extends this one and states its own support
    # (and, in details, what that means for it).
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without
      modifying the target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in
      C(check_mode)), when in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second
        invocation indicates no change.
      - This assumes that the system controlled or queried by the module has not changed in
        a relevant way.
"""

    # For modules that read and change nothing; use together with the fragment above.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify state; it runs the same in check mode.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
  idempotent:
    support: full
    details:
      - This action does not modify state; C(changed) is always false.
"""

    # The modules named by the action group hafleet in meta/runtime.yml (the ones that talk
    # to an agent's API).
    ACTIONGROUP_HAFLEET = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/hafleet.cluster.hafleet) in C(module_defaults) to set defaults
      for this module, such as O(api_url) and O(api_token_file).
    support: full
    membership:
      - hafleet.cluster.hafleet
"""
