# Copyright: hafleet contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The API client (module_utils/_api_client.py, vendored from the agent) and its Ansible
wrapper (module_utils/api.py) against small stand-in agents served on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from ansible_collections.hafleet.cluster.plugins.module_utils._api_client import APIClient
from ansible_collections.hafleet.cluster.plugins.module_utils.api import (
    USER_AGENT,
    HafleetAPIClient,
    HafleetAPIError,
    api_argument_spec,
    api_path,
    client_from_params,
    fail_json_on_api_error,
    read_token_file,
)

TOKEN = "t" * 40


class FakeAgent(ThreadingHTTPServer):
    """Just enough of the agent's API: health, a KV store with CAS, and some failures."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), FakeAgentHandler)
        self.requests = []
        self.down = False
        self.kv = {}
        self.index = 0

    @property
    def base_url(self):
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class FakeAgentHandler(BaseHTTPRequestHandler):
    server: FakeAgent

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass

    def do_GET(self):
        self._handle("GET")

    def do_PUT(self):
        self._handle("PUT")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def _handle(self, method):
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        self.server.requests.append(
            {
                "method": method,
                "path": parts.path,
                "query": query,
                "headers": dict(self.headers),
                "body": body,
            }
        )

        if parts.path == "/v1/health":
            return self._json(200, {"ok": True})
        if self.server.down:
            return self._json(503, {"error": "no leader"})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._json(401, {"error": "missing or wrong API token"})
        if parts.path == "/v1/slow":
            time.sleep(2)
            return self._json(200, {})
        if parts.path == "/v1/plain-error":
            return self._send(500, b"internal trouble", "text/plain")
        if parts.path == "/v1/not-json":
            return self._send(200, b"<html>surprise</html>", "text/html")
        if parts.path == "/v1/moved":
            self.send_response(302)
            self.send_header("Location", "/v1/health")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if parts.path == "/v1/leadership/transfer":
            return self._json(503, {"error": "no leader"})
        if parts.path.startswith("/v1/kv/"):
            return self._kv(method, unquote(parts.path[len("/v1/kv/") :]), query, body)
        return self._json(404, {"error": "no such endpoint"})

    def _kv(self, method, key, query, body):
        current = self.server.kv.get(key)
        if method == "GET":
            if current is None:
                return self._json(404, {"error": f"key {key!r} not found"})
            return self._json(200, current)
        if "cas" in query:
            expected = int(query["cas"])
            actual = current["modify_index"] if current else 0
            if expected != actual:
                return self._json(409, {"error": f"cas {expected} != modify_index {actual}"})
        if method == "PUT":
            if not isinstance(body, dict) or "value" not in body:
                return self._json(400, {"error": 'body must be {"value": ...}'})
            self.server.index += 1
            entry = {"key": key, "value": body["value"], "modify_index": self.server.index}
            self.server.kv[key] = entry
            return self._json(200, entry)
        if method == "DELETE":
            if current is None:
                return self._json(404, {"error": f"key {key!r} not found"})
            del self.server.kv[key]
            return self._json(200, {"key": key, "deleted": True})
        return self._json(400, {"error": f"method {method} not supported"})

    def _json(self, status, payload):
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json")

    def _send(self, status, raw, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def _serve():
    server = FakeAgent()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return server, thread


def _stop(server, thread):
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(name="agent")
def agent_fixture():
    server, thread = _serve()
    try:
        yield server
    finally:
        _stop(server, thread)


@pytest.fixture(name="agent2")
def agent2_fixture():
    server, thread = _serve()
    try:
        yield server
    finally:
        _stop(server, thread)


def _dead_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens on the port any more


@pytest.fixture(name="client")
def client_fixture(agent):
    return HafleetAPIClient(agent.base_url, token=TOKEN, timeout=5, use_proxy=False)


def test_calls_decode_json_and_send_the_bearer_token(agent, client):
    assert client.health() == {"ok": True}
    request = agent.requests[-1]
    assert request["method"] == "GET"
    assert request["path"] == "/v1/health"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Accept"] == "application/json"
    assert request["headers"]["User-Agent"] == USER_AGENT


def test_put_sends_json_and_returns_the_new_state(agent, client):
    answer = client.kv_put("color", {"name": "blue"})

    assert answer == {"key": "color", "value": {"name": "blue"}, "modify_index": 1}
    request = agent.requests[-1]
    assert request["method"] == "PUT"
    assert request["path"] == "/v1/kv/color"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["body"] == {"value": {"name": "blue"}}
    assert client.kv_get("color") == answer


def test_keys_and_ids_are_quoted_as_one_path_segment(agent, client):
    client.kv_put("a/b c?", 1)

    assert agent.requests[-1]["path"] == "/v1/kv/a%2Fb%20c%3F"
    assert client.kv_get("a/b c?")["value"] == 1
    assert api_path("v1", "kv", "a/b c?") == "/v1/kv/a%2Fb%20c%3F"
    with pytest.raises(HafleetAPIError):
        client.remove_member("n 1/x", drain_timeout=2.5)
    assert agent.requests[-1]["path"] == "/v1/members/n%201%2Fx"
    assert agent.requests[-1]["query"] == {"drain_timeout": "2.5s"}


def test_query_values_are_encoded_and_none_is_left_out(agent, client):
    client.kv_put("k", "x", cas=0)
    assert agent.requests[-1]["query"] == {"cas": "0"}

    client.kv_get("k", stale=True)
    assert agent.requests[-1]["query"] == {"stale": "1"}
    client.kv_get("k")
    assert agent.requests[-1]["query"] == {}


def test_not_found_maps_to_status_and_agent_message(client):
    with pytest.raises(HafleetAPIError) as caught:
        client.kv_get("absent")

    error = caught.value
    assert error.status == 404
    assert error.message == "key 'absent' not found"
    assert error.body == {"error": "key 'absent' not found"}
    assert error.method == "GET"
    assert error.url.endswith("/v1/kv/absent")
    assert str(error) == f"GET {error.url}: HTTP 404: key 'absent' not found"
    assert not error.maybe_applied and not error.retryable


def test_cas_conflict_is_409(client):
    first = client.kv_put("k", 1, cas=0)
    assert first["modify_index"] == 1

    with pytest.raises(HafleetAPIError) as caught:
        client.kv_put("k", 2, cas=0)
    assert caught.value.status == 409
    assert "modify_index 1" in caught.value.message

    assert client.kv_put("k", 2, cas=1)["value"] == 2
    assert client.kv_delete("k") == {"key": "k", "deleted": True}


def test_no_leader_is_503_and_retryable(client):
    with pytest.raises(HafleetAPIError) as caught:
        client.transfer_leadership()
    assert caught.value.status == 503
    assert caught.value.message == "no leader"
    assert caught.value.retryable and not caught.value.maybe_applied


def test_wrong_token_is_401(agent):
    client = HafleetAPIClient(agent.base_url, token="wrong", use_proxy=False)
    with pytest.raises(HafleetAPIError) as caught:
        client.status()
    assert caught.value.status == 401


def test_no_token_sends_no_authorization_header(agent):
    client = HafleetAPIClient(agent.base_url + "/", use_proxy=False)
    assert client.health() == {"ok": True}
    assert "Authorization" not in agent.requests[-1]["headers"]


def test_non_json_error_body_becomes_the_message(client):
    with pytest.raises(HafleetAPIError) as caught:
        client.request("GET", "/v1/plain-error")
    assert caught.value.status == 500
    assert caught.value.message == "internal trouble"
    assert caught.value.body is None


def test_non_json_success_body_is_an_error(client):
    with pytest.raises(HafleetAPIError) as caught:
        client.request("GET", "/v1/not-json")
    assert caught.value.status == 200
    assert "not JSON" in caught.value.message


def test_redirects_are_not_followed(agent, client):
    with pytest.raises(HafleetAPIError) as caught:
        client.request("GET", "/v1/moved")
    assert caught.value.status == 302
    assert [r["path"] for r in agent.requests] == ["/v1/moved"]


def test_timeout_has_no_status(agent):
    client = HafleetAPIClient(agent.base_url, token=TOKEN, timeout=0.3, use_proxy=False)
    with pytest.raises(HafleetAPIError) as caught:
        client.request("GET", "/v1/slow")
    assert caught.value.status is None
    assert "no HTTP answer" in str(caught.value)
    assert not caught.value.maybe_applied  # a read


def test_refused_connection_has_no_status():
    client = HafleetAPIClient(_dead_url(), token=TOKEN, use_proxy=False)
    with pytest.raises(HafleetAPIError) as caught:
        client.health()
    assert caught.value.status is None
    assert "request failed" in caught.value.message
    assert caught.value.sent is False


def test_failover_moves_past_a_dead_agent_and_one_without_leader(agent, agent2):
    agent.down = True
    client = APIClient([_dead_url(), agent.base_url, agent2.base_url], token=TOKEN, use_proxy=False)
    assert client.kv_put("k", "v")["value"] == "v"
    assert client.base_url == agent2.base_url
    assert [r["path"] for r in agent.requests] == ["/v1/kv/k"]  # its 503 moved it on
    assert agent2.kv["k"]["value"] == "v"


def test_a_write_that_may_have_arrived_is_not_sent_again(agent, agent2):
    client = APIClient([agent.base_url, agent2.base_url], token=TOKEN, timeout=0.3, use_proxy=False)
    with pytest.raises(HafleetAPIError) as caught:
        client.request("PUT", "/v1/slow", {"value": 1})
    assert caught.value.status is None and caught.value.maybe_applied
    assert not caught.value.retryable
    assert agent2.requests == []
    assert client.base_url == agent.base_url


def test_status_describes_one_agent_and_never_fails_over(agent):
    client = APIClient([_dead_url(), agent.base_url], token=TOKEN, use_proxy=False)
    with pytest.raises(HafleetAPIError) as caught:
        client.status()
    assert caught.value.status is None
    assert agent.requests == []


def test_learn_adds_the_members_api_addresses_after_the_given_ones(agent):
    client = APIClient([agent.base_url], token=TOKEN)
    client.learn([{"id": "n2", "api_addr": "10.0.0.2:7480"}, {"id": "n3"}])
    assert client.urls == [agent.base_url, "http://10.0.0.2:7480"]
    assert client.base_url == agent.base_url
    client.fail_over("test")
    assert client.base_url == "http://10.0.0.2:7480"


def test_bad_base_url_and_path_are_refused():
    with pytest.raises(ValueError):
        HafleetAPIClient("127.0.0.1:7480")
    with pytest.raises(ValueError):
        HafleetAPIClient().url("v1/health")


def test_read_token_file_strips_whitespace(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n", encoding="utf-8")
    assert read_token_file(str(path)) == TOKEN

    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    # A plain ValueError: as an API error it read "no HTTP answer: cannot read ..."
    with pytest.raises(ValueError, match="is empty"):
        read_token_file(str(empty))
    with pytest.raises(ValueError, match="cannot read"):
        read_token_file(str(tmp_path / "missing"))


def test_client_from_params_reads_the_token_file(agent, tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN, encoding="utf-8")
    params = {"api_url": agent.base_url, "api_token": None, "api_token_file": str(path)}
    client = client_from_params(params)
    assert client.token == TOKEN and client.base_url == agent.base_url
    assert client.kv_put("p", 1)["value"] == 1
    assert agent.requests[-1]["headers"]["Authorization"] == f"Bearer {TOKEN}"


def test_the_tls_options_reach_the_client(tmp_path):
    """O(ca_path) and O(validate_certs) (true by default; E(HAFLEET_CA_FILE) stands in for
    O(ca_path)) reach the client; the verification itself is tested against a real HTTPS
    server in tests/agent/cluster/test_client_tls.py (the same client file)."""
    spec = api_argument_spec()
    assert spec["validate_certs"] == {"type": "bool", "default": True}
    assert spec["ca_path"]["type"] == "path"
    assert spec["ca_path"]["fallback"][1] == ["HAFLEET_CA_FILE"]
    params = {"api_url": "https://127.0.0.1:1", "api_token": TOKEN}
    client = client_from_params(params)
    assert client.validate_certs is True and client.ca_path is None
    assert client.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert client.ssl_context.check_hostname is True
    client = client_from_params({**params, "validate_certs": False})
    assert client.ssl_context.verify_mode == ssl.CERT_NONE
    missing = str(tmp_path / "missing-ca.pem")
    with pytest.raises(ValueError, match="cannot load the CA file .*missing-ca.pem"):
        client_from_params({**params, "ca_path": missing})


class FakeModule:
    def __init__(self):
        self.failed = None

    def fail_json(self, **kwargs):
        self.failed = kwargs
        raise SystemExit(1)


def test_an_api_error_fails_the_module_once_with_its_status():
    module = FakeModule()
    error = HafleetAPIError("timed out", method="PUT", url="http://a/v1/kv/k")
    with pytest.raises(SystemExit):
        fail_json_on_api_error(module, error, "cannot write k")
    assert module.failed == {
        "msg": "cannot write k: PUT http://a/v1/kv/k: no HTTP answer: timed out",
        "status": None,
        "maybe_applied": True,
    }
    with pytest.raises(SystemExit):
        fail_json_on_api_error(module, HafleetAPIError("absent", status=404, method="GET"))
    assert module.failed == {"msg": "GET: HTTP 404: absent", "status": 404}
