"""Runs every interaction script in ``testdata/`` (see ``interaction.py`` for the format).

``REWRITE=1`` regenerates the expected output of the scripts instead of checking it; read
every regenerated trace before committing it. Scripts named ``known_bug_*.txt`` pin the
*correct* behaviour of a known core bug: they are expected to fail (strict xfail) until the
bug is fixed, and ``REWRITE=1`` leaves them alone (``REWRITE=all`` rewrites them too).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from interaction import check_file

TESTDATA = Path(__file__).parent / "testdata"
KNOWN_BUG_PREFIX = "known_bug_"


def _params() -> list[object]:
    params: list[object] = []
    for path in sorted(TESTDATA.glob("*.txt")):
        marks = []
        if path.name.startswith(KNOWN_BUG_PREFIX):
            marks.append(
                pytest.mark.xfail(
                    strict=True,
                    reason="pins the correct behaviour of a known core bug (see the file)",
                )
            )
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


def _rewrite(path: Path) -> bool:
    mode = os.environ.get("REWRITE", "")
    if mode == "all":
        return True
    return mode not in ("", "0") and not path.name.startswith(KNOWN_BUG_PREFIX)


@pytest.mark.parametrize("path", _params())
def test_interaction(path: Path) -> None:
    diff = check_file(path, rewrite=_rewrite(path))
    if diff:
        pytest.fail(
            f"{path.name}: the trace differs from the expected output (- expected, + actual).\n"
            "If the new trace is right (read it!), regenerate with REWRITE=1.\n" + diff,
            pytrace=False,
        )


# The scenarios the core must never lose (a rename must update this list, not drop one).
REQUIRED = (
    "campaign",
    "prevote",
    "checkquorum",
    "leader_lease",
    "figure8_commit",
    "figure8_overwrite",
    "replication_conflict_backoff",
    "replication_inflight",
    "learner",
    "confchange_remove_follower",
    "confchange_remove_leader",
    "confchange_one_at_a_time",
    "transfer_leader",
    "transfer_lagging",
    "snapshot",
    "read_index_leader",
    "read_index_follower",
    "read_index_quorum",
    "crash_restart",
    "election_restriction",
    "prevote_stale_log",
    "single_node",
    "election_timer",
    "unreachable",
    # core bugs found by these scripts, fixed, and kept as regression tests
    "regression_compact_below_snapshot",
    "regression_restart_with_applied",
    "regression_snapshot_conf_state",
    "regression_snapshot_excludes_new_learner",
    "read_index_duplicate_context",
    "read_index_lost_round",
    "confchange_add_voter_check_quorum",
    "transfer_leader_to_self",
    "replication_probe_heartbeat",
)


def test_required_scenarios_present() -> None:
    missing = [n for n in REQUIRED if not (TESTDATA / f"{n}.txt").is_file()]
    assert not missing, f"scenario files missing from {TESTDATA}: {missing}"
