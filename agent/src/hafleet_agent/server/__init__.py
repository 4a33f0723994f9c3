"""The agent's HTTP API: ``api.py`` (the routes, the app and its listener), ``forward.py`` (a
write that reached a follower, to the leader), ``prom.py`` (``/metrics``), ``conn.py`` (the
connection cap, keep-alive, requests aiohttp's parser refuses), ``audit.py`` (the tokens'
scopes, the audit log). ``run.py`` starts it with
:func:`start_api`; it sees the node only through ``node/verbs.py`` and ``node/errors.py``."""

from .api import build_app, start_api

__all__ = ["build_app", "start_api"]
