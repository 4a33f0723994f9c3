"""``GET /ui/``: the live cluster page, a static page every agent serves (docs/monitoring.md).

The files are package data in ``hafleet_agent/ui/`` (``index.html``, ``app.js``, ``app.css``,
``favicon.svg``; no build step, nothing fetched from elsewhere), read once at their first
request and served from memory. Loading them needs no token (the middleware lets :data:`PATHS`
through); the page asks for the token once, keeps it in the tab's ``sessionStorage`` and sends
it as ``Authorization: Bearer`` to ``/v1/status``, ``/v1/members``, ``/v1/weights`` and the
``/v1/watch`` long-polls that drive its updates, on the same origin (HTTPS when TLS is on).

Every answer carries strict headers (:data:`SECURITY_HEADERS`): a Content-Security-Policy that
allows only this origin's own script, style and API (no inline script or style, no frames,
no form submission), ``nosniff``, no referrer. The script writes data with ``textContent``
only: a member id or a metric is never parsed as HTML.

The module imports no HTTP server: :func:`add_routes` is given the router's ``add_get`` and
the server's ``Response`` class (aiohttp's ``web.Response`` or one with its interface), and the
handlers use only ``Response(status=, text=, content_type=, headers=)`` and, for the redirect,
``request.query``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

#: The files of the page: path -> (package file, content type).
FILES: dict[str, tuple[str, str]] = {
    "/ui/": ("index.html", "text/html"),
    "/ui/app.js": ("app.js", "text/javascript"),
    "/ui/app.css": ("app.css", "text/css"),
    # the page names its icon: the browser asks for no /favicon.ico (a 401 without a token)
    "/ui/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
#: The paths served without a token (``/ui`` answers a redirect to ``/ui/``).
PATHS = frozenset({"/ui", *FILES})

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # the files change only with the agent: revalidate rather than keep a stale page
    "Cache-Control": "no-cache",
}

_cache: dict[str, str] = {}


def content(name: str) -> str:
    """A file of the page (``index.html``, ...), read from the package once."""
    text = _cache.get(name)
    if text is None:
        from importlib import resources

        text = (resources.files("hafleet_agent") / "ui" / name).read_text(encoding="utf-8")
        _cache[name] = text
    return text


Handler = Callable[[Any], Awaitable[Any]]


def _file(response: Callable[..., Any], name: str, ctype: str) -> Handler:
    async def page(request: Any) -> Any:
        """A file of the page (HEAD too: the server drops the body); UTF-8."""
        return response(
            status=200, text=content(name), content_type=ctype, headers=SECURITY_HEADERS
        )

    return page


#: The page's own parameter (app.js reads ``?wait=Ns``, 1-300 s): the one the redirect keeps.
WAIT = re.compile(r"[0-9]{1,3}s")


def _redirect(response: Callable[..., Any]) -> Handler:
    async def redirect(request: Any) -> Any:
        """``GET /ui``: to ``/ui/`` (the page's relative URLs need the slash), keeping a
        well-formed ``?wait=Ns`` (nothing else of the request goes into the header)."""
        wait = getattr(request, "query", {}).get("wait")
        location = f"/ui/?wait={wait}" if wait and WAIT.fullmatch(wait) else "/ui/"
        return response(status=308, headers={**SECURITY_HEADERS, "Location": location})

    return redirect


def add_routes(add_get: Callable[[str, Handler], Any], response: Callable[..., Any]) -> None:
    """Register the page's routes with the router's ``add_get`` (which adds HEAD as well);
    ``response`` makes the answers (the server's ``web.Response``)."""
    add_get("/ui", _redirect(response))
    for path, (name, ctype) in FILES.items():
        add_get(path, _file(response, name, ctype))
