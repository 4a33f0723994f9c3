"""The core's internals stay inside ``raft/``: the driver, the API and the simulator see the
core through ``RawNode``'s verbs and its read-only views (``raft/status.py``), never through
``RawNode.raft`` (the ``Raft`` object with its log, progress table and counters).

``sim/checkers.py`` is the one exception: the safety checkers compare the logs themselves,
entry by entry, which is white-box by design."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from layering import package_imports

import hafleet_agent

PKG_DIR = Path(list(hafleet_agent.__path__)[0])
EXEMPT = frozenset({"sim/checkers.py"})
#: Modules that still break the rule (issue 14's next step moves them to the views): the test
#: is a strict xfail for them, so it fails as soon as one is clean and must leave this list.
NOT_YET: frozenset[str] = frozenset()


def _outside_raft() -> list[Path]:
    return sorted(
        p
        for p in PKG_DIR.rglob("*.py")
        if p.relative_to(PKG_DIR).parts[0] != "raft"
        and p.relative_to(PKG_DIR).as_posix() not in EXEMPT
    )


def core_reads(source: str) -> list[str]:
    """Every ``<x>.raft`` (and ``getattr(<x>, "raft")``) in the source, by line."""
    hits: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "raft":
            hits.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value == "raft"
        ):
            hits.append(f"line {node.lineno}: {ast.unparse(node)}")
    return hits


def test_modules_found() -> None:
    names = {p.relative_to(PKG_DIR).as_posix() for p in _outside_raft()}
    assert {"server/api.py", "sim/simulator.py", "transport.py"} <= names
    assert not any(n.startswith("raft/") for n in names)


def _params() -> list[object]:
    out: list[object] = []
    for p in _outside_raft():
        rel = p.relative_to(PKG_DIR).as_posix()
        marks = []
        if rel in NOT_YET:
            marks.append(pytest.mark.xfail(strict=True, reason="not moved to the views yet"))
        out.append(pytest.param(p, id=rel, marks=marks))
    return out


@pytest.mark.parametrize("path", _params())
def test_no_core_internals_outside_raft(path: Path) -> None:
    hits = core_reads(path.read_text())
    assert not hits, (
        f"{path.relative_to(PKG_DIR)} reads the Raft core's internals "
        f"(use RawNode.basic_status()/progress()): {'; '.join(hits)}"
    )


@pytest.mark.parametrize(
    "source",
    [
        "t = raw.raft.term",
        "r = self.raw.raft if self.raw else None",
        "x = node.raw.raft.log.committed",
        "pr = agent.raw.raft.prs.get(n)",
        "getattr(raw, 'raft')",
        "def f(raw):\n    return [raw.raft]",
    ],
)
def test_checker_catches(source: str) -> None:
    assert core_reads(source)


@pytest.mark.parametrize(
    "source",
    [
        "from .raft.core import Config",
        "from hafleet_agent.raft.status import BasicStatus",
        "st = raw.basic_status()",
        "raft_addr = peer.raft_addr",
        "getattr(raw, 'raft_addr')",
    ],
)
def test_checker_allows(source: str) -> None:
    assert not core_reads(source)


# ---- the HTTP API and the node ---------------------------------------------------------------
#: What server/ (the HTTP API) may import of the node: its errors and the protocol of its verbs.
API_MAY_IMPORT = frozenset({"node.errors", "node.verbs"})


def test_api_sees_only_the_node_verbs() -> None:
    paths = sorted((PKG_DIR / "server").glob("*.py"))
    assert PKG_DIR / "server" / "api.py" in paths
    bad = [
        f"server/{path.name} line {line}: {mod}"
        for path in paths
        for line, mod in package_imports(path.read_text(), ("server",))
        if mod == "agent" or (mod.startswith("node") and mod not in API_MAY_IMPORT)
    ]
    assert not bad, f"server/ imports the node's insides: {', '.join(bad)}"


def test_import_reader() -> None:
    source = (
        "from .agent import Agent\nfrom .node.verbs import NodeVerbs\nfrom . import agent\n"
        "import hafleet_agent.agent\nfrom hafleet_agent.node import chores\n"
    )
    mods = [m for _, m in package_imports(source)]
    assert mods == ["agent", "node.verbs", "agent", "agent", "node"]
    assert [m for _, m in package_imports("from ..agent import x", ("node",))] == ["agent"]
    assert [m for _, m in package_imports("from .errors import x", ("node",))] == ["node.errors"]


def _modules() -> list[tuple[str, list[tuple[int, str]]]]:
    """(path relative to the package, its imports of package modules) of every module."""
    out = []
    for p in sorted(PKG_DIR.rglob("*.py")):
        rel = p.relative_to(PKG_DIR)
        out.append((rel.as_posix(), package_imports(p.read_text(), rel.parts[:-1])))
    return out


def _is_server(mod: str) -> bool:
    return mod in ("api", "server") or mod.startswith("server.")


def _is_node(mod: str) -> bool:
    return mod == "node" or mod.startswith("node.")


def test_the_node_never_imports_the_server() -> None:
    """The node knows nothing of the HTTP server: run.py starts the API with it."""
    bad = [
        f"{path} line {line}: {mod}"
        for path, imports in _modules()
        if path.startswith("node/")
        for line, mod in imports
        if _is_server(mod)
    ]
    assert not bad, f"node/ imports the HTTP server: {', '.join(bad)}"


def test_run_is_the_only_module_that_imports_both_node_and_server() -> None:
    """The composition root: the one module outside node/ and server/ that imports both
    (server/ itself imports only node/errors.py and node/verbs.py, checked above)."""
    both = [
        path
        for path, imports in _modules()
        if not path.startswith(("node/", "server/"))
        and any(_is_node(m) for _, m in imports)
        and any(_is_server(m) for _, m in imports)
    ]
    assert both == ["run.py"]


def test_layering_readers() -> None:
    imports = package_imports("from ..server import start_api\nfrom .. import api\n", ("node",))
    assert [m for _, m in imports] == ["server", "api"]
    assert all(_is_server(m) for _, m in imports)
    assert _is_server("server.api") and not _is_server("serverless") and not _is_server("apiclient")
    assert _is_node("node.node") and _is_node("node") and not _is_node("nodes")
