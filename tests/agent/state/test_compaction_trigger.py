"""When a running node compacts its log: after ``snapshot_entries`` applied entries once the
log holds ``snapshot_log_ratio`` times the state's bytes, or once the log file holds
``snapshot_log_bytes``, whichever comes first; held back (up to twice both) while a member
catches up through a chunked snapshot; never for fewer than ``MIN_APPLIED`` newly applied
entries; and the settings are checked at startup."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hafleet_agent.config import MIN_SNAPSHOT_LOG_BYTES, AgentConfig, ConfigError, load
from hafleet_agent.node.compaction import MIN_APPLIED, Compaction
from hafleet_agent.raft.types import ConfState
from hafleet_agent.state import StateMachine

ENTRIES, SIZE = 100, 1 << 20


def started(
    applied: int, log_bytes: int, sending: bool = False, state_bytes: int = 0, ratio: float = 0.5
) -> bool:
    """Whether a compaction starts with ``applied`` entries applied after the log's first,
    a log file of ``log_bytes`` and a state of ``state_bytes``."""
    cfg = AgentConfig(
        node_id="n1",
        snapshot_entries=ENTRIES,
        snapshot_log_bytes=SIZE,
        snapshot_log_ratio=ratio,
    )
    state = StateMachine()
    state.kv_bytes = lambda: state_bytes  # type: ignore[method-assign]
    first = 50
    state.index = first + applied
    raw = SimpleNamespace(
        first_index=first, term_at=lambda i: 3, conf_state_at=lambda i: ConfState(("n1",))
    )
    storage = SimpleNamespace(log_bytes=lambda: log_bytes)
    spawned = []

    def spawn(coro, name: str) -> None:
        coro.close()  # not run: only whether it was started
        spawned.append(name)

    compaction = Compaction(
        cfg,
        state,
        spawn=spawn,
        fail=lambda why: pytest.fail(why),
        wake=lambda: None,
        sending_snapshot=lambda: sending,
    )
    compaction.maybe_start(raw, storage)  # type: ignore[arg-type]
    assert compaction.busy == bool(spawned)
    return bool(spawned)


def test_after_enough_entries() -> None:
    assert not started(ENTRIES - 1, 1000)
    assert started(ENTRIES, 1000)


def test_once_the_log_is_large_whatever_the_count() -> None:
    assert not started(MIN_APPLIED, SIZE - 1)
    assert started(MIN_APPLIED, SIZE)
    assert not started(MIN_APPLIED - 1, 50 * SIZE)  # nothing much to cover: no snapshot storm


def test_a_large_state_waits_until_the_log_holds_its_share_of_the_state() -> None:
    state = 200_000
    share = state // 2  # the default snapshot_log_ratio, 0.5
    assert not started(10 * ENTRIES, share - 1, state_bytes=state)  # past the count, log small
    assert started(ENTRIES, share, state_bytes=state)
    assert not started(ENTRIES - 1, 4 * share, state_bytes=state)  # the count still holds first
    assert started(ENTRIES, 1000, state_bytes=state, ratio=0)  # 0: every snapshot_entries
    assert started(ENTRIES, 2 * state, state_bytes=state, ratio=2)
    assert not started(ENTRIES, 2 * state - 1, state_bytes=state, ratio=2)
    big = SIZE * 4  # a state larger than snapshot_log_bytes: the log's bound still holds
    assert not started(ENTRIES, SIZE - 1, state_bytes=big)
    assert started(MIN_APPLIED, SIZE, state_bytes=big)


def test_held_back_while_a_member_catches_up() -> None:
    assert not started(ENTRIES, 1000, sending=True)
    assert not started(2 * ENTRIES - 1, 2 * SIZE - 1, sending=True)
    assert started(2 * ENTRIES, 1000, sending=True)
    assert started(MIN_APPLIED, 2 * SIZE, sending=True)


def test_the_settings_are_checked(tmp_path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"snapshot_log_bytes = {MIN_SNAPSHOT_LOG_BYTES - 1}\n")
    with pytest.raises(ConfigError, match="snapshot_log_bytes must be at least"):
        load(str(cfg), {"node_id": "n1"})
    cfg.write_text(f"snapshot_log_bytes = {MIN_SNAPSHOT_LOG_BYTES}\n")
    assert load(str(cfg), {"node_id": "n1"}).snapshot_log_bytes == MIN_SNAPSHOT_LOG_BYTES
    assert AgentConfig(node_id="n1").snapshot_entries == 8192
    for bad in (-0.1, 16.5):
        cfg.write_text(f"snapshot_log_ratio = {bad}\n")
        with pytest.raises(ConfigError, match="snapshot_log_ratio must be in 0..16"):
            load(str(cfg), {"node_id": "n1"})
    cfg.write_text("snapshot_log_ratio = 0\n")
    assert load(str(cfg), {"node_id": "n1"}).snapshot_log_ratio == 0
    assert AgentConfig(node_id="n1").snapshot_log_ratio == 0.5
