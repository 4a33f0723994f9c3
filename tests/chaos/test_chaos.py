"""Chaos scenarios against real agents in lab namespaces: one short run of each.

Each test builds its own lab (bridge ``hfch0``, namespaces ``hfch-n*``, 10.81.0.0/24; see
chaoslab.py), forms a cluster, runs the client workload through the fault, and checks the
recorded history (linearizability, lost acknowledged writes, replicas) and the scenario's
own claims (chaos_scenarios.py). ``make chaos`` runs every scenario many times
(run_chaos.py). Needs root, iproute2 and nftables (``make system-deps`` installs them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from chaos_scenarios import SCENARIOS, run_scenario

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables (nft) is not installed"),
    pytest.mark.timeout(180),
]

#: A fixed seed per scenario in make test (the seed picks targets and variants).
SEED = int(os.environ.get("HFCH_SEED", "1"))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_chaos_scenario(name: str, tmp_path: Path) -> None:
    result = run_scenario(name, SEED, tmp_path)
    if result.skipped:
        pytest.skip(result.skipped)
    details = "\n".join(
        [f"{name} seed {SEED}: {result.seconds}s, {result.ops} ops"]
        + [f"PROBLEM: {p}" for p in result.problems]
        + [f"note: {n}" for n in result.notes]
    )
    assert result.ok, details
    assert result.violations == 0 and result.lost_acked == 0, details
