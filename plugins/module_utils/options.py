# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Checks of module options that Ansible's argument spec cannot express, shared by the
modules that talk to an agent (``api.HafleetModule``) and those that do not."""

from __future__ import annotations


def check_seconds(module, name, low=0.0, high=86400.0, low_ok=True):
    """Fail ``module`` unless its option ``name`` (seconds, when given) is a finite number in
    ``[low, high]`` (``(low, high]`` when not ``low_ok``): NaN waited forever, 1e308
    overflowed, 0 was taken as the default and -1 failed deep in the socket module."""
    value = module.params.get(name)
    if value is None:
        return
    above = value >= low if low_ok else value > low
    if not (above and value <= high):  # NaN fails both
        bound = "from" if low_ok else "above"
        module.fail_json(
            msg=f"{name} must be a number of seconds {bound} {low:g} up to {high:g}, got {value!r}"
        )
