"""What one simulator run is asked (:class:`SimConfig`, with the faults it may inject) and
what it returns (:class:`SeedResult`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .checkers import Violation

ALL_FAULTS = (
    "crash",  # kill -9 and restart, losing nothing that was fsync'd
    "torn",  # crash in the middle of a write: a prefix of the batch reaches the disk
    "pause",  # SIGSTOP/SIGCONT: a node (often the leader) freezes, then resumes as if nothing
    "partition",  # symmetric partitions: isolate the leader, majority/minority, random cuts
    "asym",  # one-way partitions
    "loss",  # random message loss
    "dup",  # duplicated messages
    "reorder",  # per-message jitter large enough to reorder
    "delay",  # occasional long delays
    "membership",  # add learners, promote, remove voters (the leader too)
    "transfer",  # leadership transfers
    "snapshot",  # aggressive log compaction, so followers need InstallSnapshot
)


def parse_faults(text: str) -> frozenset[str]:
    text = text.strip()
    if text == "all":
        return frozenset(ALL_FAULTS)
    if text in ("none", ""):
        return frozenset()
    names = {t.strip() for t in text.split(",") if t.strip()}
    unknown = names - set(ALL_FAULTS)
    if unknown:
        raise ValueError(
            f"unknown fault(s): {', '.join(sorted(unknown))}; choose from all, none or "
            + ", ".join(ALL_FAULTS)
        )
    return frozenset(names)


@dataclass
class SimConfig:
    seed: int
    nodes: int = 5
    steps: int = 3000
    faults: frozenset[str] = frozenset(ALL_FAULTS)
    tick_ms: float = 20.0
    election_tick: int = 10
    heartbeat_tick: int = 1
    clients: int = 3
    keys: int = 3
    op_timeout_ms: float = 1500.0
    heal_ms: float = 15000.0  # liveness bound once faults heal
    trace: bool = False


@dataclass
class SeedResult:
    seed: int
    ok: bool
    events: int
    sim_ms: float
    violation: Violation | None = None
    trace_tail: list[str] = field(default_factory=list)
    ops: int = 0
    stats: Counter[str] = field(default_factory=Counter)
