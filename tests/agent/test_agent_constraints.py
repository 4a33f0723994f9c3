"""agent/constraints.txt (the agent role's default pins, shipped in the Galaxy tarball) is
constraints.txt's pins of exactly the agent's runtime dependency closure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_agent_constraints_are_current() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "agent_constraints.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr


def test_agent_constraints_pin_the_runtime_dependencies_at_constraints_txt_versions() -> None:
    def lines(path: Path) -> set[str]:
        return {
            line.strip()
            for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        }

    agent = lines(ROOT / "agent" / "constraints.txt")
    assert agent <= lines(ROOT / "constraints.txt")
    names = {line.split("==")[0].lower().replace("_", "-") for line in agent}
    assert {"aiohttp", "zeroconf", "psutil", "msgpack", "prometheus-client"} <= names
    assert all("==" in line for line in agent)
