"""The collection's defaults are the agent's: ports, drain timeouts, the replicated KV keys.

The plugins and roles may not import ``hafleet_agent`` (they run on managed nodes and
controllers where the agent is not installed; test_layering_plugins.py holds that line), so
they write the agent's defaults again. This test reads both sides, the agent's constants by
import and the collection's files as text (Python by ``ast``, never imported; YAML parsed),
so that a default changed on one side only fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hafleet_agent import apiclient, client, client_config, keys
from hafleet_agent.balancer.inputs import DEFAULT_DRAIN_TIMEOUT
from hafleet_agent.cli import build_parser
from hafleet_agent.config import DEFAULT_API_PORT, DEFAULT_RAFT_PORT, AgentConfig

REPO = Path(__file__).resolve().parents[2]
DEFAULT_API_URL = f"http://127.0.0.1:{DEFAULT_API_PORT}"


def module_constant(path: str, name: str) -> Any:
    """The value of ``NAME = <literal>`` at the top of a Python file, without importing it."""
    for node in ast.parse((REPO / path).read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} has no {name} = ...")


def function_defaults(path: str, name: str) -> dict[str, Any]:
    """The literal default values of the keyword parameters of function ``name``."""
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            args = node.args.args[len(node.args.args) - len(node.args.defaults) :]
            return {
                a.arg: ast.literal_eval(d) for a, d in zip(args, node.args.defaults, strict=True)
            }
    raise AssertionError(f"{path} has no function {name}")


def yaml_file(path: str) -> Any:
    return yaml.safe_load((REPO / path).read_text())


def documentation(path: str, constant: str = "DOCUMENTATION") -> Any:
    """A plugin's (or a doc fragment class's) documentation string, parsed."""
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == constant for t in node.targets
        ):
            return yaml.safe_load(ast.literal_eval(node.value))
    raise AssertionError(f"{path} has no {constant}")


def role_spec_defaults(role: str) -> dict[str, Any]:
    spec = yaml_file(f"roles/{role}/meta/argument_specs.yml")["argument_specs"]["main"]
    return {name: opt.get("default") for name, opt in spec["options"].items()}


# ---- ports --------------------------------------------------------------------------------


def test_the_agents_own_defaults_agree() -> None:
    cfg = AgentConfig()
    assert (cfg.raft_port, cfg.api_port) == (DEFAULT_RAFT_PORT, DEFAULT_API_PORT)
    # apiclient.py imports only the standard library: it writes the URL out.
    assert apiclient.DEFAULT_API_URL == DEFAULT_API_URL
    # The CLI's last resort when neither a flag, the environment nor an agent config names one.
    assert build_parser().parse_args(["status"]).api is None
    assert client_config.DEFAULT_API_URL == DEFAULT_API_URL


def test_the_roles_and_playbooks_default_to_the_agents_ports() -> None:
    agent_defaults = yaml_file("roles/agent/defaults/main.yml")
    agent_spec = role_spec_defaults("agent")
    for where in (agent_defaults, agent_spec):
        assert where["agent_raft_port"] == DEFAULT_RAFT_PORT
        assert where["agent_api_port"] == DEFAULT_API_PORT
    play_vars = yaml_file("playbooks/vars/main.yml")
    assert play_vars["hafleet_raft_port"] == DEFAULT_RAFT_PORT
    assert play_vars["hafleet_api_port"] == DEFAULT_API_PORT
    assert yaml_file("roles/balancer/defaults/main.yml")["balancer_api_urls"] == [DEFAULT_API_URL]
    assert role_spec_defaults("balancer")["balancer_api_urls"] == [DEFAULT_API_URL]


def test_the_plugins_default_to_the_agents_ports() -> None:
    assert module_constant("plugins/module_utils/_api_client.py", "DEFAULT_API_URL") == (
        DEFAULT_API_URL
    )
    fragment = documentation("plugins/doc_fragments/api.py")
    assert fragment["options"]["api_url"]["default"] == DEFAULT_API_URL
    inventory = documentation("plugins/inventory/agents.py")
    assert inventory["options"]["api_urls"]["default"] == [DEFAULT_API_URL]
    plan = function_defaults("plugins/filter/scale_plan.py", "scale_plan")
    assert (plan["raft_port"], plan["api_port"]) == (DEFAULT_RAFT_PORT, DEFAULT_API_PORT)
    plan_doc = yaml_file("plugins/filter/scale_plan.yml")["DOCUMENTATION"]["options"]
    assert plan_doc["raft_port"]["default"] == DEFAULT_RAFT_PORT
    assert plan_doc["api_port"]["default"] == DEFAULT_API_PORT


def test_the_collection_docs_state_the_agents_ports() -> None:
    text = (REPO / "docs" / "collection.md").read_text()
    assert re.search(rf"Raft {DEFAULT_RAFT_PORT}\b[^,|]*, API {DEFAULT_API_PORT}\b", text), (
        "docs/collection.md does not state the agent's ports as 'Raft N ..., API M ...'"
    )


# ---- drain timeouts -----------------------------------------------------------------------


def test_the_member_module_knows_the_agents_drain_timeout() -> None:
    """The module sizes the removal's HTTP timeout by the agent's default drain wait."""
    drain = AgentConfig().drain_timeout_s
    assert module_constant("plugins/modules/member.py", "DEFAULT_DRAIN_S") == drain
    # The CLI's one-call timeout covers it too (hafleet-agent leave).
    assert client.TIMEOUT > drain
    # The role leaves it to the agent unless it is set.
    assert yaml_file("roles/agent/defaults/main.yml")["agent_drain_timeout"] is None
    assert yaml_file("playbooks/vars/main.yml")["hafleet_drain_timeout"] == ""


def test_the_balancer_role_and_flag_default_to_the_syncers_drain_timeout() -> None:
    flags = build_parser().parse_args(
        ["balancer", "--haproxy-socket", "/run/h.sock", "--backend", "app"]
    )
    assert flags.drain_timeout == DEFAULT_DRAIN_TIMEOUT
    assert yaml_file("roles/balancer/defaults/main.yml")["balancer_drain_timeout"] == (
        DEFAULT_DRAIN_TIMEOUT
    )
    assert role_spec_defaults("balancer")["balancer_drain_timeout"] == DEFAULT_DRAIN_TIMEOUT


# ---- the replicated KV protocol keys ------------------------------------------------------

PROTOCOL_KEYS = (
    keys.REGISTERED_KEY,
    keys.DRAINED_PREFIX,
    keys.OVERRIDE_PREFIX,
    keys.MAINTENANCE_PREFIX,
)
# A KV key written into a URL of the API (/v1/kv/KEY) or a `hafleet-agent kv` command line,
# up to the first Jinja expression, quote, space or end of line.
KV_USE = re.compile(r"(?:/v1/kv/|hafleet-agent kv (?:get|put|del) )([^\s\"'{]+)")
COLLECTION_DIRS = ("plugins", "roles", "playbooks", "extensions")


def kv_keys_in_the_collection() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for top in COLLECTION_DIRS:
        for path in sorted((REPO / top).rglob("*")):
            if path.suffix not in (".py", ".yml", ".yaml", ".j2", ".sh") or not path.is_file():
                continue
            for key in KV_USE.findall(path.read_text(errors="replace")):
                found.setdefault(key, []).append(str(path.relative_to(REPO)))
    return found


def test_the_kv_keys_the_collection_uses_are_the_agents_protocol_keys() -> None:
    """A key in a namespace of the protocol (``balancer/``, ``weights/``) is one of its keys;
    other keys (an operator's ``app/config``) are none of this test's business."""
    namespaces = {k.split("/", 1)[0] + "/" for k in PROTOCOL_KEYS}
    found = {
        key: where
        for key, where in kv_keys_in_the_collection().items()
        if any(key.startswith(ns) for ns in namespaces)
    }
    assert found, "no protocol key found in the collection: has the pattern gone stale?"
    for key, where in found.items():
        assert any(key == k or (k.endswith("/") and key.startswith(k)) for k in PROTOCOL_KEYS), (
            f"{key!r} ({', '.join(where)}) is none of the agent's KV keys {PROTOCOL_KEYS}"
        )


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('url: "{{ api }}/v1/kv/weights/override/{{ node }}"', "weights/override/"),
        ("hafleet-agent kv put balancer/registered 1", "balancer/registered"),
        ("GET /v1/kv/app/config", "app/config"),
    ],
)
def test_the_kv_pattern_finds_a_key_up_to_its_first_template(line: str, key: str) -> None:
    assert KV_USE.findall(line) == [key]
