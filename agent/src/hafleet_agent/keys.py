"""The replicated KV keys that are a protocol between the agents and the balancer.

The KV store (``/v1/kv/{key}``, ``hafleet-agent kv``) is the operator's; these few keys are
also read or written by the agent and by ``hafleet-agent balancer``, and their meaning is a
contract (docs/balancer.md, "The protocol with the agents"; docs/agent.md, weight
overrides). This module is their one home: the node (:mod:`.node.chores`, the removal in
:mod:`.node.node`) and the balancer (:mod:`.balancer.reports`) import them from here, and a
test holds the collection's files to them. Pure: the standard library only, no import of
the agent.

Every key fits the API's key rule (segments separated by ``/``, none empty, ``.`` or
``..``): a member id starts with a letter or a digit.
"""

from __future__ import annotations

#: Written by a balancer once it has checked HAProxy and has a view of the group
#: (``{backend, host, pid, strategy, drain_timeout_s, at}``). While it exists, a removal
#: waits (up to the agent's ``drain_timeout_s``) for the member's drained mark.
REGISTERED_KEY = "balancer/registered"

#: ``balancer/drained/<id>``: written by the balancer when member ``<id>`` is draining and
#: HAProxy holds no session on its server (or the drain timeout passed); the agent that
#: removes the member goes on when it appears.
DRAINED_PREFIX = "balancer/drained/"

#: ``balancer/registered/<balancer-id>``: each syncer's own registration (same value as
#: ``balancer/registered``, plus ``balancer_id`` and ``ttl_s``), written again every
#: ``REGISTRATION_REFRESH_S``; a removal waits for every registration not older than its
#: ``ttl_s``, and a syncer deletes its own on a clean stop.
REGISTERED_PREFIX = "balancer/registered/"

#: ``balancer/drained/<balancer-id>/<id>``: balancer ``<balancer-id>`` is done draining member
#: ``<id>`` (the legacy ``balancer/drained/<id>`` is one segment shorter).
DRAINED_BY_PREFIX = "balancer/drained/"

#: A syncer writes its registration again this often; it counts for ``REGISTRATION_TTL_S``.
REGISTRATION_REFRESH_S = 3.0
REGISTRATION_TTL_S = 10.0

#: ``health/service/<id>``: written by the leader while member ``<id>``'s own service check
#: fails (``{"ok": false, "detail", "since"}``), deleted when it passes again. A failing
#: service gets weight 0 and the syncers drain its server.
SERVICE_HEALTH_PREFIX = "health/service/"

#: ``health/unreachable/<id>``: written by the leader when member ``<id>`` has not answered
#: for ``unreachable_after_ms`` (``{"since", "silent_ms"}``), deleted once it has answered
#: for ``reachable_after_ms``. The syncers drain its server meanwhile.
UNREACHABLE_PREFIX = "health/unreachable/"

#: ``maintenance/<id>``: member ``<id>`` is in maintenance (``{"since", "reason"}``), written
#: and deleted by ``PUT``/``DELETE /v1/members/{id}/maintenance``. It stays a member and votes;
#: the leader gives it weight 0 and the syncers drain its server until the key goes.
MAINTENANCE_PREFIX = "maintenance/"

#: ``hafleet/lock``: the fleet's lock of the collection's playbooks (hafleet.cluster.fleet_lock:
#: ``{holder, run, controller, pid, pid_start, taken, ttl}``), written with CAS by the run that
#: changes the fleet and deleted at its end. The agent does not read it; a restore drops it.
PLAYBOOK_LOCK_KEY = "hafleet/lock"

#: ``weights/override/<id>``: an integer 0..256 that pins member ``<id>``'s weight (0 drains
#: it); the leader's weight planning reads it. The API refuses any other value under the
#: prefix (400 with :data:`OVERRIDE_RULE`); one already stored is ignored, with a warning.
OVERRIDE_PREFIX = "weights/override/"
OVERRIDE_MAX = 256  # HAProxy's largest server weight
OVERRIDE_RULE = (
    f"a {OVERRIDE_PREFIX}<id> value is an integer 0..{OVERRIDE_MAX} "
    "(1..256 pins the member's weight, 0 drains it)"
)


def valid_override(value: object) -> bool:
    """Whether ``value`` is a weight override: an int (not a bool) in 0..OVERRIDE_MAX."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= OVERRIDE_MAX


def drained_key(balancer_id: str, member_id: str) -> str:
    return f"{DRAINED_BY_PREFIX}{balancer_id}/{member_id}"


__all__ = [
    "DRAINED_BY_PREFIX",
    "DRAINED_PREFIX",
    "MAINTENANCE_PREFIX",
    "OVERRIDE_MAX",
    "PLAYBOOK_LOCK_KEY",
    "OVERRIDE_PREFIX",
    "OVERRIDE_RULE",
    "REGISTERED_KEY",
    "REGISTERED_PREFIX",
    "REGISTRATION_REFRESH_S",
    "REGISTRATION_TTL_S",
    "SERVICE_HEALTH_PREFIX",
    "UNREACHABLE_PREFIX",
    "drained_key",
    "valid_override",
]
