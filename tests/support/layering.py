"""A module's imports read from its source (``ast``): the one reader of the tests that hold
the layering (docs/architecture.md) -- the pure core, the sans-I/O modules, the node and the
server, the collection's plugins."""

from __future__ import annotations

import ast

#: Modules that read or write files, talk over sockets, run event loops, threads, processes
#: or signals. The pure core forbids more (the clock, randomness, pathlib: test_purity).
IO_MODULES = frozenset(
    {
        "asyncio",
        "socket",
        "socketserver",
        "select",
        "selectors",
        "ssl",
        "os",
        "io",
        "fcntl",
        "mmap",
        "shutil",
        "tempfile",
        "subprocess",
        "signal",
        "threading",
        "multiprocessing",
        "concurrent",
    }
)


def imported_modules(source: str) -> list[tuple[int, str]]:
    """``(line, module)`` for every import anywhere in ``source``, nested ones included, and
    for ``__import__("m")`` / ``importlib.import_module("m")`` with a literal name. A relative
    import keeps its dots: ``from .x import y`` is ``.x``, ``from .. import a, b`` is ``..a``
    and ``..b`` (the names may be modules)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            dots = "." * node.level
            if node.module:
                found.append((node.lineno, dots + node.module))
            else:
                found.extend((node.lineno, dots + alias.name) for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def absolute_tops(source: str) -> list[tuple[int, str]]:
    """``(line, top-level name)`` of every absolute import: ``os`` for ``import os.path``."""
    return [(ln, m.partition(".")[0]) for ln, m in imported_modules(source) if m[:1] != "."]


def package_imports(
    source: str, rel_pkg: tuple[str, ...] = (), package: str = "hafleet_agent"
) -> list[tuple[int, str]]:
    """``(line, module relative to the package)`` of every import of one of ``package``'s
    modules, in the source of a module that sits in the subpackage ``rel_pkg`` (``()`` for the
    package's top): ``from ..server import x`` in ``node/`` is ``server``."""
    found: list[tuple[int, str]] = []
    for line, mod in imported_modules(source):
        if mod.startswith("."):
            level = len(mod) - len(mod.lstrip("."))
            base = list(rel_pkg[: len(rel_pkg) - (level - 1)])
            rest = mod.lstrip(".")
            found.append((line, ".".join(base + ([rest] if rest else []))))
        elif mod == package or mod.startswith(package + "."):
            found.append((line, mod.removeprefix(package).lstrip(".")))
    return found
