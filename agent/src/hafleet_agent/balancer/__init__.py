"""The balancer: keeps an HAProxy backend in step with the group (``hafleet-agent balancer``).

- :mod:`.syncer`: the syncer loop (:class:`~.syncer.Balancer`, :func:`~.syncer.run_balancer`);
- :mod:`.cluster`: the syncer's side towards the agents (the watches, the KV writes, the
  registration refresh), which :class:`~.syncer.Balancer` inherits;
- :mod:`.inputs`: what it is given (:class:`~.inputs.Options`), the checks of it (the admin
  socket, the URL file) and :class:`~.inputs.BalancerError`, which stops it with an exit code;
- :mod:`.reports`: its side of the KV protocol with the agents (the keys: :mod:`..keys`);
- :mod:`.plan`: what the group wants and the commands that take HAProxy there (pure);
- :mod:`.runtime_api`: HAProxy's Runtime API over the admin socket, and its answers;
- :mod:`.haproxy_config`: the HAProxy configuration and the server state file;
- :mod:`.process`: HAProxy's process (render, start, reload, stop, status): ``hafleet-haproxy``.

docs/balancer.md is the long version.
"""

from __future__ import annotations

from ..keys import DRAINED_PREFIX, REGISTERED_KEY
from .inputs import BalancerError, Options
from .syncer import run_balancer

__all__ = ["DRAINED_PREFIX", "REGISTERED_KEY", "BalancerError", "Options", "run_balancer"]
