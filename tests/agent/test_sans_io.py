"""The byte formats and the rules are modules without I/O (docs/architecture.md, "The
rules"): the modules that do I/O -- the transport, the WAL, discovery, the node, the server,
the syncer -- sit on top of them. Each one's own imports, nested ones included, name no I/O,
thread, process or clock-driven event-loop module. (The pure Raft core is held to a longer
list by tests/agent/raft/test_purity.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from layering import IO_MODULES, absolute_tops

import hafleet_agent

PKG_DIR = Path(list(hafleet_agent.__path__)[0])
SANS_IO = (
    "wire.py",
    "payload.py",
    "wireerrors.py",
    "walformat.py",
    "snapfile.py",
    "snapframes.py",
    "discovery_records.py",
    "commands.py",
    "kv.py",
    "codec.py",
    "weights.py",
    "balancer/plan.py",
    "keys.py",
    "ids.py",
    "addr.py",
)
#: I/O, and the libraries that do I/O for the agent.
NO_IO = IO_MODULES | {"http", "urllib", "aiohttp", "psutil", "zeroconf"}


@pytest.mark.parametrize("rel", SANS_IO)
def test_a_sans_io_module_imports_no_io(rel: str) -> None:
    path = PKG_DIR / rel
    hits = [f"line {ln}: {top}" for ln, top in absolute_tops(path.read_text()) if top in NO_IO]
    assert not hits, f"{rel} is listed as sans I/O but imports {', '.join(hits)}"


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("import os.path", True),
        ("def f():\n    import asyncio", True),
        ("from concurrent.futures import Future", True),
        ("import importlib\nimportlib.import_module('socket')", True),
        ("from .os import x", False),
        ("import json, struct", False),
    ],
)
def test_the_check_sees_nested_and_dynamic_imports(source: str, caught: bool) -> None:
    assert any(top in NO_IO for _, top in absolute_tops(source)) is caught
