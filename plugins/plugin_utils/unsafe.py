# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Marking data from the network as unsafe, so that Ansible never templates it.

An agent's answers (node ids, addresses, metrics) come from the network. Whatever ends up in
the inventory is wrapped: a value such as ``{{ lookup('pipe', 'rm -rf /') }}`` stays a plain
string. ansible-core 2.19 and later treat strings without trust as data already; ``wrap_var``
keeps the same meaning on the older versions this collection supports.
"""

from __future__ import annotations

from ansible.utils.unsafe_proxy import wrap_var


def make_unsafe(value):
    """``value`` (recursively, for dicts, lists and sets) marked as never to be templated."""
    return wrap_var(value)
