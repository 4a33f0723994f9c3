"""The cluster page's files and handlers without a browser (server/ui.py, hafleet_agent/ui/).

The rules the page keeps, checked on its source: every file is package data (in the wheel) and
served; no inline script, style or event handler (the CSP forbids them, the page would break);
nothing written as HTML (``textContent`` only: member ids and metrics come from the network);
nothing loaded from elsewhere. The Chromium test (test_ui_chromium.py) shows the page working.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import tomllib
from pathlib import Path
from typing import Any

from hafleet_agent.server import ui

UI_DIR = Path(ui.__file__).resolve().parent.parent / "ui"
PYPROJECT = Path(__file__).resolve().parents[3] / "agent" / "pyproject.toml"


def source(name: str) -> str:
    return (UI_DIR / name).read_text(encoding="utf-8")


def test_every_file_is_package_data_and_served() -> None:
    files = sorted(p.name for p in UI_DIR.iterdir() if p.is_file())
    assert files == ["app.css", "app.js", "favicon.svg", "index.html"]
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]
    for name in files:
        assert any(fnmatch.fnmatch(f"ui/{name}", p) for p in patterns["hafleet_agent"]), name
    assert sorted(name for name, _ in ui.FILES.values()) == files


class FakeResponse:
    """What the handlers give the server's Response class."""

    def __init__(self, **kwargs: Any) -> None:
        self.kw = kwargs


def handlers() -> dict[str, Any]:
    routes: dict[str, Any] = {}
    ui.add_routes(routes.__setitem__, FakeResponse)
    return routes


def test_the_handlers_answer_with_strict_headers() -> None:
    routes = handlers()
    files = {"/ui/app.js", "/ui/app.css", "/ui/favicon.svg"}
    assert set(routes) == set(ui.PATHS) == {"/ui", "/ui/", *files}
    for path, (name, ctype) in ui.FILES.items():
        answer = asyncio.run(routes[path](None)).kw
        assert answer["status"] == 200 and answer["content_type"] == ctype
        assert answer["text"] == source(name)
        headers = answer["headers"]
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
    redirect = asyncio.run(routes["/ui"](None)).kw
    assert redirect["status"] == 308 and redirect["headers"]["Location"] == "/ui/"


class FakeRequest:
    def __init__(self, query: dict[str, str]) -> None:
        self.query = query


def test_the_redirect_keeps_the_page_s_wait_and_nothing_else() -> None:
    """``/ui?wait=120s`` (docs/monitoring.md) lands on ``/ui/?wait=120s``: the page reads it
    from its own URL. Only a well-formed ``wait`` goes into the Location (nothing of the
    request is echoed into a header)."""
    redirect = handlers()["/ui"]
    cases = {
        "120s": "/ui/?wait=120s",
        "5s": "/ui/?wait=5s",
        "1s\r\nSet-Cookie: x=1": "/ui/",
        "//evil.example/": "/ui/",
        "9999s": "/ui/",
    }
    for wait, location in cases.items():
        answer = asyncio.run(redirect(FakeRequest({"wait": wait, "x": "y"}))).kw
        assert answer["status"] == 308 and answer["headers"]["Location"] == location, wait
    assert asyncio.run(redirect(FakeRequest({}))).kw["headers"]["Location"] == "/ui/"


def test_no_inline_script_style_or_handler_in_the_page() -> None:
    html = source("index.html")
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S | re.I)
    assert scripts == [(' src="app.js" defer', "")]
    assert not re.search(r"<style\b", html, re.I)
    assert not re.search(r"\sstyle\s*=", html, re.I)
    assert not re.search(r"\son[a-z]+\s*=", html, re.I)
    assert not re.search(r"javascript:", html, re.I)


def test_nothing_written_as_html_nor_loaded_from_elsewhere() -> None:
    js = source("app.js")
    sinks = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(")
    for sink in sinks:
        assert sink not in js, sink
    assert "textContent" in js
    for name in ("index.html", "app.js", "app.css"):  # favicon.svg: its xmlns is a name
        text = source(name)
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name
        assert "@import" not in text, name
