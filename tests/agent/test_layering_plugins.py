"""Two lines of the layering (docs/architecture.md, issue 14):

- the collection's plugins never import ``hafleet_agent``: they run on controllers and
  managed nodes where the agent is not installed, and reach agents only through the HTTP
  API (``plugins/module_utils/_api_client.py``, the vendored client) and the CLI;
- ``hafleet_agent/apiclient.py``, the one client of that API, imports only the standard
  library: it is copied byte for byte into ``plugins/module_utils`` (``make vendor``), where
  nothing else of the agent, nor any third-party package, is there to import.

Imports are read by ``ast`` (every ``import`` and ``from ... import``, also the ones inside
functions and ``try`` blocks, and ``importlib.import_module``/``__import__`` of a literal).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from layering import imported_modules

import hafleet_agent

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
APICLIENT = Path(list(hafleet_agent.__path__)[0]) / "apiclient.py"


def plugin_files() -> list[Path]:
    return sorted(p for p in PLUGINS.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_plugins_are_found() -> None:
    names = {p.relative_to(PLUGINS).as_posix() for p in plugin_files()}
    assert {"modules/member.py", "module_utils/api.py", "inventory/agents.py"} <= names


@pytest.mark.parametrize("path", plugin_files(), ids=lambda p: p.relative_to(PLUGINS).as_posix())
def test_a_plugin_never_imports_the_agent(path: Path) -> None:
    bad = [
        f"line {line}: {name}"
        for line, name in imported_modules(path.read_text())
        if name.split(".")[0] == "hafleet_agent"
    ]
    assert not bad, f"{path.relative_to(REPO)} imports the agent: {bad}"


def test_apiclient_imports_only_the_standard_library() -> None:
    imports = imported_modules(APICLIENT.read_text())
    assert imports, "no import found in apiclient.py: is the reader broken?"
    bad = [
        f"line {line}: {name}"
        for line, name in imports
        if name.startswith(".") or name.split(".")[0] not in sys.stdlib_module_names
    ]
    assert not bad, f"apiclient.py imports beyond the standard library: {bad}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import hafleet_agent.keys", [(1, "hafleet_agent.keys")]),
        ("def f():\n    from hafleet_agent import keys", [(2, "hafleet_agent")]),
        ("from . import api", [(1, ".api")]),
        ("from ..config import X", [(1, "..config")]),
        (
            "import importlib\nimportlib.import_module('hafleet_agent')",
            [(1, "importlib"), (2, "hafleet_agent")],
        ),
        ("__import__('yaml')", [(1, "yaml")]),
    ],
)
def test_the_reader_sees_every_kind_of_import(source: str, expected: list[tuple[int, str]]) -> None:
    assert sorted(imported_modules(source)) == sorted(expected)
