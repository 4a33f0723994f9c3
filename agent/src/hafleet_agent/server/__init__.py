"""The agent's HTTP API: ``api.py`` (the routes, the app and its listener), ``forward.py`` (a
write that reached a follower, to the leader), ``prom.py`` (``/metrics``), ``audit.py`` (the
tokens' scopes, the audit log); the server under them: ``conn.py`` (the listener: connection
cap, TLS), ``http.py`` (HTTP/1.1 on each connection: parsing, keep-alive, limits), ``web.py``
(requests, responses, the router: aiohttp's names), ``httpclient.py`` (a request to the
leader). ``run.py`` starts it with :func:`start_api`; it sees the node only through
``node/verbs.py`` and ``node/errors.py``."""

from . import web
from .api import book_all, build_app, start_api

__all__ = ["book_all", "build_app", "start_api", "web"]
