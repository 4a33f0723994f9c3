"""A stand-in agent API for the CLI's tests: a ``BaseHTTPRequestHandler`` subclass answers,
``serving`` runs it on loopback for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    """Answer ``payload`` as JSON with ``status``."""
    raw = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """The URL of a server of ``handler`` on 127.0.0.1, stopped when the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


#: The client's environment variables (hafleet_agent/client_config.py).
CLIENT_ENV = (
    "HAFLEET_API_URL",
    "HAFLEET_API_TOKEN",
    "HAFLEET_API_TOKEN_FILE",
    "HAFLEET_TOKEN_FILE",
    "HAFLEET_CA_FILE",
    "HAFLEET_CONFIG",
)


def no_local_agent(tmp_path: Any, monkeypatch: Any) -> None:
    """No agent config, no controller secrets and no client variable of this machine count
    in a test of the CLI (call it from an autouse fixture)."""
    from hafleet_agent import client_config

    monkeypatch.setattr(client_config, "AGENT_CONFIGS", (str(tmp_path / "none/*.toml"),))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)


def secret_file(path: Any, value: str | bytes) -> Any:
    """``value`` and a newline in ``path``, mode 0600 (a token or key file)."""
    path.write_bytes((value.encode() if isinstance(value, str) else value) + b"\n")
    path.chmod(0o600)
    return path


class Recording(BaseHTTPRequestHandler):
    """A stand-in agent: records ``(method, path, JSON body)`` in ``calls`` and answers what
    :meth:`route` gives; a request without ``Bearer <token>`` is a 401, as the agent's."""

    calls: list[tuple[str, str, Any]] = []
    token = ""

    def log_message(self, *args: Any) -> None:
        pass

    def route(self, body: Any) -> tuple[Any, int]:
        raise NotImplementedError

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.calls.append((self.command, self.path, body))
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            send_json(self, 401, {"error": "wrong API token"})
            return
        payload, status = self.route(body)
        send_json(self, status, payload)

    do_GET = do_PUT = do_DELETE = do_POST = _answer
