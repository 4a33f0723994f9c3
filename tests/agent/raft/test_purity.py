"""The consensus core is a pure state machine: no I/O, no clock, no threads, no randomness of
its own (time and randomness come in from the driver). Every module of ``raft/`` is held to it,
without exception: the durable log (file I/O by design) lives outside, in ``wal.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from layering import IO_MODULES, imported_modules

import hafleet_agent.raft

RAFT_DIR = Path(list(hafleet_agent.raft.__path__)[0])
FORBIDDEN = IO_MODULES | {
    "pathlib",
    # clock and randomness: they come in from the driver
    "time",
    "datetime",
    "random",
    "secrets",
    "uuid",
}


def _core_modules() -> list[Path]:
    return sorted(RAFT_DIR.rglob("*.py"))


def forbidden_imports(source: str) -> list[str]:
    hits = []
    for line, module in imported_modules(source):
        if module[:1] != "." and module.split(".")[0] in FORBIDDEN:
            hits.append(f"line {line}: {module}")
    return hits


def test_core_modules_found() -> None:
    names = {p.name for p in _core_modules()}
    assert {"core.py", "log.py", "progress.py", "rawnode.py", "types.py"} <= names


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: p.relative_to(RAFT_DIR).as_posix())
def test_core_module_is_pure(path: Path) -> None:
    hits = forbidden_imports(path.read_text())
    assert not hits, f"{path.name} imports what the pure core must not: {', '.join(hits)}"


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import os.path",
        "import time as t",
        "from asyncio import sleep",
        "from socket import *",
        "import json, random",
        "def f():\n    import threading",
        "from select import poll",
        "import importlib\nimportlib.import_module('time')",
        "__import__('os')",
        "import fcntl",
        "from pathlib import Path",
        "import concurrent.futures",
        "from datetime import datetime",
        "import secrets",
    ],
)
def test_checker_catches(source: str) -> None:
    assert forbidden_imports(source)


@pytest.mark.parametrize(
    "source",
    ["import json", "from . import types", "from .os import x", "import timeit", "import osmium"],
)
def test_checker_allows(source: str) -> None:
    assert not forbidden_imports(source)
