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

#: ``weights/override/<id>``: an integer 0..256 that pins member ``<id>``'s weight (0 drains
#: it); the leader's weight planning reads it.
OVERRIDE_PREFIX = "weights/override/"


__all__ = ["DRAINED_PREFIX", "OVERRIDE_PREFIX", "REGISTERED_KEY"]
