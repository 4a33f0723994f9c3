#!/usr/bin/env python3
"""Write (or check) agent/constraints.txt: the pins of the agent's runtime dependencies.

The collection ships agent/ (its source) and this file, so that an installed Galaxy copy
builds the same wheelhouse as the checkout: the agent role's default ``agent_pip_constraints``
is agent/constraints.txt. The versions are constraints.txt's (the checkout's one list of
pins, made by ``make constraints``); the set is the closure of agent/pyproject.toml's
``dependencies`` as the installed packages of this Python declare them, with each
requirement's environment marker taken as true when it holds for any Python the agent
supports here (3.11, 3.12, 3.13) — a wheelhouse built with any of them stays pinned.

    python hack/agent_constraints.py          # write agent/constraints.txt
    python hack/agent_constraints.py --check  # exit 1 (and say what differs) when stale

Run it with .venv's Python (``make agent-constraints``): it reads that venv's metadata.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ("3.11", "3.12", "3.13")
HEADER = """\
# The agent's runtime dependencies, pinned: the agent role's default agent_pip_constraints,
# shipped in the collection (an installed Galaxy copy builds the same wheelhouse as a checkout).
# Made from constraints.txt by hack/agent_constraints.py (make agent-constraints); do not edit.
"""


def applies(req: Requirement) -> bool:
    """Whether ``req`` applies without extras on any supported Python (Linux, CPython)."""
    if req.marker is None:
        return True
    for version in PYTHONS:
        env = default_environment()
        env.update(
            python_version=version,
            python_full_version=f"{version}.0",
            sys_platform="linux",
            platform_system="Linux",
            os_name="posix",
            platform_python_implementation="CPython",
            implementation_name="cpython",
            extra="",
        )
        if req.marker.evaluate(env):
            return True
    return False


def closure(roots: list[str]) -> set[str]:
    """The canonical names of ``roots`` and everything they require, transitively."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        if not applies(req):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            sys.exit(f"agent-constraints: {req.name} is not installed in {sys.prefix} (make venv)")
        todo.extend(Requirement(r) for r in requires)
    return seen


def pins(path: Path) -> dict[str, str]:
    """constraints.txt as canonical name -> its ``name==version`` line."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            out[canonicalize_name(line.split("==", 1)[0])] = line
    return out


def render() -> str:
    project = tomllib.loads((ROOT / "agent" / "pyproject.toml").read_text())["project"]
    names = closure(project["dependencies"])
    pinned = pins(ROOT / "constraints.txt")
    missing = sorted(names - set(pinned))
    if missing:
        sys.exit(f"agent-constraints: constraints.txt pins none of {missing}: run make constraints")
    return HEADER + "".join(f"{pinned[n]}\n" for n in sorted(names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args()
    target = ROOT / "agent" / "constraints.txt"
    text = render()
    if args.check:
        have = target.read_text() if target.exists() else ""
        if have != text:
            print(
                f"agent-constraints: {target.relative_to(ROOT)} is stale; run make"
                f" agent-constraints.\n--- it has:\n{have}--- it should have:\n{text}",
                file=sys.stderr,
            )
            return 1
        return 0
    target.write_text(text)
    print(f"agent-constraints: wrote {target.relative_to(ROOT)} ({text.count(chr(10)) - 3} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
