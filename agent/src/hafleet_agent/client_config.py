"""Where the client subcommands (status, members, leave, kv, maintenance, ...) find the agent:
its API URL, the API token and the CA that an ``https://`` agent's certificate must chain to.

Each of the three comes from the first of (docs/agent.md, "The client commands"):

1. the flag (``--api``, ``--token-file``, ``--ca-file``);
2. the environment: ``HAFLEET_API_URL``, ``HAFLEET_API_TOKEN_FILE`` (or the token itself in
   ``HAFLEET_API_TOKEN``), ``HAFLEET_CA_FILE`` — the names the collection's modules read too;
   ``HAFLEET_TOKEN_FILE``, the CLI's older name, still works;
3. the local agent's own configuration (the TOML file of ``hafleet-agent run --config``):
   ``--config FILE`` or ``HAFLEET_CONFIG``, else the first of :data:`AGENT_CONFIGS` that
   exists (the agent role's path on a host, then the lab's nodes on the controller; the other
   lab nodes are tried in turn when the first refuses the connection). The URL is
   ``http(s)://ADVERTISE-OR-BIND:API_PORT`` (https when the config names ``tls_ca_file``),
   the token its ``token_file``, the CA its ``tls_ca_file``;
4. on a controller of real hosts, the secrets the roles keep: ``~/.hafleet/<cluster>/token``
   and ``ca.crt`` (when there is exactly one cluster there);
5. the URL ``http://127.0.0.1:7480``. With no token anywhere the command stops and names
   every place it looked.
"""

from __future__ import annotations

import glob
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .addr import api_base_url
from .config import DEFAULT_API_PORT, ConfigError, read_secret, secret_error

DEFAULT_API_URL = f"http://127.0.0.1:{DEFAULT_API_PORT}"

ENV_API_URL = "HAFLEET_API_URL"
ENV_TOKEN = "HAFLEET_API_TOKEN"
ENV_TOKEN_FILE = "HAFLEET_API_TOKEN_FILE"
ENV_TOKEN_FILE_ALIASES = ("HAFLEET_TOKEN_FILE",)  # the CLI's name before the modules' was shared
ENV_CA_FILE = "HAFLEET_CA_FILE"
ENV_CONFIG = "HAFLEET_CONFIG"

#: The agent configurations tried in turn: the agent role's (roles/agent, agent_config_dir),
#: then the lab's nodes on the controller (playbooks/vars/lab_node.yml; the first in order).
AGENT_CONFIGS = (
    "/etc/hafleet-agent/agent.toml",
    "/var/lib/hafleet-lab/nodes/*/etc/agent.toml",
)
#: The controller's secrets (roles/agent, agent_secrets_dir): ~/.hafleet/<cluster>/.
CONTROLLER_SECRETS = "~/.hafleet/*/token"


class DiscoveryError(Exception):
    """Nothing usable found, or what was found cannot be read (exit code 2)."""


@dataclass
class Endpoint:
    api: str
    token: bytes
    ca_file: str | None
    #: where each came from, for the messages and the tests
    sources: dict[str, str] = field(default_factory=dict)
    #: the other lab nodes' API URLs when the URL came from the first of several configs:
    #: tried in turn when the first agent refuses the connection (it may be stopped)
    alternates: list[str] = field(default_factory=list)


def env_token_file(env: Mapping[str, str] | None = None) -> str | None:
    """The token file the environment names (the shared name first, then the old one)."""
    env = os.environ if env is None else env
    for name in (ENV_TOKEN_FILE, *ENV_TOKEN_FILE_ALIASES):
        if env.get(name):
            return env[name]
    return None


def _agent_config_paths(config: str | None, env: Mapping[str, str]) -> list[str]:
    given = config or env.get(ENV_CONFIG)
    if given:
        return [given]
    found: list[str] = []
    for pattern in AGENT_CONFIGS:
        found += sorted(glob.glob(pattern)) if "*" in pattern else [pattern]
    return [p for p in found if os.path.exists(p)]


def read_agent_config(path: str) -> dict[str, Any]:
    """What a client needs of an agent's TOML: ``api``, ``token_file``, ``ca_file``."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise DiscoveryError(f"the agent config {path} does not exist") from None
    except PermissionError:
        raise DiscoveryError(
            f"cannot read the agent config {path}: permission denied (run as root, or give "
            f"--api, --token-file and --ca-file)"
        ) from None
    except (OSError, ValueError) as exc:  # (TOMLDecodeError, a NUL in the name)
        raise DiscoveryError(f"cannot read the agent config {path}: {exc}") from None
    for key in ("advertise", "bind", "token_file", "tls_ca_file"):
        if not isinstance(data.get(key, ""), str) or "\x00" in data.get(key, ""):
            raise DiscoveryError(
                f"the agent config {path}: {key} must be a string without NUL characters, "
                f"got {data[key]!r:.80}"
            )
    port = data.get("api_port") or DEFAULT_API_PORT
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise DiscoveryError(
            f"the agent config {path}: api_port must be an integer in 1..65535, got {port!r:.80}"
        )
    host = data.get("advertise") or data.get("bind") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    ca = data.get("tls_ca_file") or None
    return {
        "api": f"{'https' if ca else 'http'}://{host}:{port}",
        "token_file": data.get("token_file") or None,
        "ca_file": ca,
    }


def _controller_secrets() -> tuple[str, str | None] | None:
    """``(token file, CA file or None)`` when exactly one ~/.hafleet/<cluster>/token exists."""
    tokens = sorted(glob.glob(os.path.expanduser(CONTROLLER_SECRETS)))
    if len(tokens) != 1:
        return None
    ca = Path(tokens[0]).with_name("ca.crt")
    return tokens[0], str(ca) if ca.exists() else None


def looked_for(config: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The places the token is looked for, for the message when none is found."""
    env = os.environ if env is None else env
    configs = config or env.get(ENV_CONFIG) or " or ".join(AGENT_CONFIGS)
    return (
        f"--token-file FILE, ${ENV_TOKEN_FILE} (or ${ENV_TOKEN}), the agent's config "
        f"({configs}; --config FILE or ${ENV_CONFIG}) and the controller's "
        f"{CONTROLLER_SECRETS}"
    )


def discover(
    api: str | None = None,
    token_file: str | None = None,
    ca_file: str | None = None,
    config: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Endpoint:
    """The agent a client subcommand talks to (see the module's docstring)."""
    env = os.environ if env is None else env
    sources: dict[str, str] = {}
    token: bytes | None = None
    for flag, value in (("--token-file", token_file), ("--ca-file", ca_file), ("--config", config)):
        if value is not None and not value.strip():
            raise DiscoveryError(f"{flag} is empty: give a file name, or leave the flag out")
    if api:
        sources["api"] = "--api"
    elif env.get(ENV_API_URL):
        try:
            api = api_base_url(env[ENV_API_URL])
        except ValueError as exc:
            raise DiscoveryError(f"${ENV_API_URL}: {exc}") from None
        sources["api"] = f"${ENV_API_URL}"
    if token_file:
        sources["token"] = "--token-file"
    elif env_token_file(env):
        token_file = env_token_file(env)
        sources["token"] = "$" + next(
            n for n in (ENV_TOKEN_FILE, *ENV_TOKEN_FILE_ALIASES) if env.get(n)
        )
    elif env.get(ENV_TOKEN, "").strip():
        # (the same rule as a token file's; surrogateescape: the bytes the variable held)
        token = env[ENV_TOKEN].strip().encode("utf-8", "surrogateescape")
        error = secret_error(token, f"${ENV_TOKEN}", token=True)
        if error is not None:
            raise DiscoveryError(error)
        sources["token"] = f"${ENV_TOKEN}"
    if ca_file:
        sources["ca"] = "--ca-file"
    elif env.get(ENV_CA_FILE):
        ca_file = env[ENV_CA_FILE]
        sources["ca"] = f"${ENV_CA_FILE}"

    alternates: list[str] = []
    if api is None or (token_file is None and token is None):
        paths = _agent_config_paths(config, env)
        if paths:
            found = read_agent_config(paths[0])
            if api is None:
                api = found["api"]
                sources["api"] = paths[0]
                alternates = [_api_of(p) for p in paths[1:]]
                if ca_file is None and found["ca_file"]:
                    ca_file, sources["ca"] = found["ca_file"], paths[0]
            if token_file is None and token is None and found["token_file"]:
                token_file, sources["token"] = found["token_file"], paths[0]
    if token_file is None and token is None:
        secrets = _controller_secrets()
        if secrets is not None:
            token_file, sources["token"] = secrets[0], secrets[0]
            if ca_file is None and secrets[1] and (api or "").startswith("https://"):
                ca_file, sources["ca"] = secrets[1], secrets[1]
    if api is None:
        api, sources["api"] = DEFAULT_API_URL, "the default"
    if token is None:
        if token_file is None:
            raise DiscoveryError(f"no API token found; looked for {looked_for(config, env)}")
        try:
            token = read_secret(token_file, "token")
        except ConfigError as exc:
            raise DiscoveryError(f"{exc} (from {sources.get('token', '--token-file')})") from None
    alternates = [a for a in alternates if a and a != api]
    return Endpoint(api=api, token=token, ca_file=ca_file, sources=sources, alternates=alternates)


def discover_for(args: Any) -> Endpoint:
    """:func:`discover` with a client subcommand's parsed flags (``--api``, ``--token-file``,
    ``--ca-file``, ``--config``; any of them may be missing from its parser)."""
    return discover(
        getattr(args, "api", None),
        getattr(args, "token_file", None),
        getattr(args, "ca_file", None),
        getattr(args, "config", None),
    )


def _api_of(path: str) -> str | None:
    try:
        return str(read_agent_config(path)["api"])
    except DiscoveryError:
        return None
