"""The agent's CPU scheduling policy (run.py's ``cpu_policy``, ``cpu_scheduling_policy``):
SCHED_BATCH unless told otherwise, a policy the service manager set left alone, a refusal
logged and survived; and on real agents, every thread of the process under it."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from harness import Cluster

from hafleet_agent.config import AgentConfig, ConfigError, validate
from hafleet_agent.run import cpu_policy

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's"
)


def in_thread(f: Callable[[], str], before: Callable[[], None] = lambda: None) -> tuple[str, int]:
    """``f()`` in a thread of its own (a policy is a thread's: the test's own is untouched),
    after ``before()`` there; what it said and the thread's policy after it."""
    out: list[Any] = []

    def body() -> None:
        before()
        out.append(f())
        out.append(os.sched_getscheduler(0))

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert len(out) == 2, "the thread did not finish"
    return out[0], out[1]


def test_batch_puts_a_thread_of_the_default_policy_under_sched_batch() -> None:
    said, policy = in_thread(lambda: cpu_policy("batch"))
    assert policy == os.SCHED_BATCH
    assert said.startswith("SCHED_BATCH"), said
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's thread is untouched


def test_other_leaves_the_policy_as_it_was_started() -> None:
    said, policy = in_thread(lambda: cpu_policy("other"))
    assert policy == os.SCHED_OTHER
    assert "left as it was started" in said


def test_a_policy_the_service_manager_set_is_left_alone() -> None:
    """systemd's ``CPUSchedulingPolicy=idle`` (or ``chrt``) is the operator's choice: kept."""
    said, policy = in_thread(
        lambda: cpu_policy("batch"),
        before=lambda: os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)),
    )
    assert policy == os.SCHED_IDLE
    assert "left as the service manager set it" in said and str(os.SCHED_IDLE) in said


def test_a_refused_switch_is_said_and_the_agent_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    said, policy = in_thread(lambda: cpu_policy("batch"))
    assert policy == os.SCHED_OTHER
    assert said == "as it was started (SCHED_BATCH was refused: Operation not permitted)"
    monkeypatch.setattr(os, "sched_getscheduler", refuse)  # a filter that refuses the getter
    assert (
        cpu_policy("batch")
        == "as it was started (SCHED_BATCH was refused: Operation not permitted)"
    )


@pytest.mark.parametrize("value", ["idle", "fifo", "BATCH", "", 1, None])
def test_a_policy_other_than_batch_or_other_is_refused_at_start(value: Any) -> None:
    with pytest.raises(ConfigError, match="cpu_scheduling_policy must be"):
        validate(AgentConfig(node_id="n1", mdns=False, cpu_scheduling_policy=value))


def policies(pid: int) -> dict[int, int]:
    """Each thread of ``pid`` (its id) and its policy."""
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    return {tid: os.sched_getscheduler(tid) for tid in tids}


def test_every_thread_of_an_agent_runs_under_sched_batch_unless_told_otherwise(
    make_cluster: Callable[..., Cluster],
) -> None:
    c = make_cluster()
    batch = c.add(bootstrap_expect=1)
    assert c.leader() == batch.id
    # Its log's writer thread, mDNS's and the loop's are all started after the switch.
    c.put(batch.id, "k", 1)
    pid = batch.proc.pid  # type: ignore[union-attr]
    threads = policies(pid)
    assert len(threads) >= 2 and set(threads.values()) == {os.SCHED_BATCH}, threads
    assert "CPU scheduling: SCHED_BATCH" in batch.log_path.read_text()

    other = make_cluster(config={"cpu_scheduling_policy": "other"})
    kept = other.add(bootstrap_expect=1)
    assert other.leader() == kept.id
    assert os.sched_getscheduler(kept.proc.pid) == os.SCHED_OTHER  # type: ignore[union-attr]
    assert "CPU scheduling: left as it was started" in kept.log_path.read_text()
