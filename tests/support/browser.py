"""Headless Chromium driven over the Chrome DevTools Protocol, for tests of the cluster page.

:class:`Browser` starts Debian's ``chromium`` (``make system-deps`` installs it) headless, with
a temporary profile (``--user-data-dir``) and ``--remote-debugging-port=0``: Chromium picks a
free port and writes it to ``DevToolsActivePort`` in the profile, which :meth:`Browser.start`
waits for (with a deadline). Nothing leaves the machine: background networking, updates and
pings are off, every non-loopback request goes to a proxy on a closed loopback port, and host
names do not resolve (pages are opened by IP address).

:class:`Page` is one tab: ``await page.call(method, **params)`` sends a CDP command over the
tab's websocket (aiohttp's client) and returns its result; ``evaluate`` runs an expression in
the page and returns its JSON value; ``poll`` evaluates until a predicate holds, with a
deadline (never a sleep standing in for a condition). Console errors, uncaught exceptions and
CSP reports of the page are kept in ``page.errors``.

``close()`` ends the browser by the PIDs of its process tree (taken before the first signal),
whatever the test's outcome.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import psutil

START_TIMEOUT = 30.0
CALL_TIMEOUT = 15.0

FLAGS = [
    "--headless=new",
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--no-pings",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    # nothing but loopback: others go to a closed port; no name resolves
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.0/8",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.*",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def chromium() -> str | None:
    """The ``chromium`` command, or None when it is not installed."""
    return shutil.which("chromium")


class Browser:
    """One headless Chromium with a profile in ``directory`` (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        width: int = 1280,
        height: int = 720,
        trust: Sequence[Path] = (),
    ) -> None:
        self.dir = directory
        self.trust = list(trust)
        self.profile = directory / "profile"
        self.log_path = directory / "chromium.log"
        self.size = (width, height)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> Browser:
        exe = chromium()
        assert exe is not None, "chromium is not installed: make system-deps (Debian's chromium)"
        self.profile.mkdir(parents=True, exist_ok=True)
        argv = [
            exe,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            f"--window-size={self.size[0]},{self.size[1]}",
            *self._trust_flags(),
            "about:blank",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                self.port = int(active.read_text().splitlines()[0])
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"chromium gave no DevTools port in {START_TIMEOUT:g} s")
            time.sleep(0.05)
        return self

    def _trust_flags(self) -> list[str]:
        """Chromium accepts the certificates whose public key is one of ``trust``'s (PEM
        certificate files; by SPKI SHA-256, the way Chromium pins), e.g. the agents' own."""
        if not self.trust:
            return []
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        pins = []
        for path in self.trust:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            spki = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            pins.append(base64.b64encode(hashlib.sha256(spki).digest()).decode())
        return [f"--ignore-certificate-errors-spki-list={','.join(pins)}"]

    def log(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def page(self, session: aiohttp.ClientSession) -> Page:
        """The first tab (``about:blank``), attached over its websocket."""
        base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            async with session.get(f"{base}/json/list") as resp:
                targets = await resp.json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            assert time.monotonic() < deadline, f"no page target in {START_TIMEOUT:g} s"
            await asyncio.sleep(0.05)
        ws = await session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 << 20)
        page = Page(ws)
        page.start()
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        await page.call("Log.enable")
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            width=self.size[0],
            height=self.size[1],
            deviceScaleFactor=1,
            mobile=False,
        )
        return page

    def close(self) -> None:
        """End Chromium and its helpers by PID (SIGTERM, then SIGKILL), and reap it."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        # SIGTERM to the browser (it ends its helpers), then SIGKILL to whatever is left;
        # psutil signals a helper only while its PID is still that process
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
            if sig == signal.SIGKILL:
                for child in tree:
                    with contextlib.suppress(psutil.Error):
                        child.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
            _, alive = psutil.wait_procs(tree, timeout=5.0)
            if proc.poll() is not None and not alive:
                break
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab over the DevTools websocket (see the module docstring)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            fut = self.waiting.pop(data.get("id", -1), None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(data)
                continue
            self._event(data)
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("the DevTools websocket closed"))

    def _event(self, data: dict[str, Any]) -> None:
        method, params = data.get("method"), data.get("params", {})
        self.events.append(data)
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {text}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.errors.append(
                    f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}"
                )
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = [a.get("value", a.get("description")) for a in params.get("args", [])]
            self.errors.append(f"console.error: {args}")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[ident] = fut
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        answer = await asyncio.wait_for(fut, CALL_TIMEOUT)
        if "error" in answer:
            raise AssertionError(f"CDP {method}: {answer['error']}")
        return answer.get("result", {})

    async def navigate(self, url: str) -> None:
        result = await self.call("Page.navigate", url=url)
        assert "errorText" not in result, f"{url}: {result['errorText']}"

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited)."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def poll(
        self, expression: str, predicate: Callable[[Any], Any], timeout: float, what: str
    ) -> Any:
        """Evaluate ``expression`` until ``predicate`` holds on its value; the value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if predicate(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for {what}; the page showed {value!r}"
                    + (f"; page errors: {self.errors}" if self.errors else "")
                )
            await asyncio.sleep(0.05)

    async def screenshot(self, path: Path) -> None:
        """A PNG of the page, as tall as its content."""
        height = await self.evaluate("Math.ceil(document.body.getBoundingClientRect().bottom)")
        width = await self.evaluate("document.documentElement.clientWidth")
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        result = await self.call("Page.captureScreenshot", format="png", clip=clip)
        path.write_bytes(base64.b64decode(result["data"]))

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
