"""The simulated network between the nodes of a simulation.

A message is delivered after a short random delay (jitter large enough to reorder, now and
then a long spike) unless a partition (``blocked``: one-way pairs) or random loss drops it;
some are delivered twice. :meth:`SimNetwork.fault` changes one of these at random, the way
the ``partition``, ``asym``, ``loss``, ``dup``, ``reorder`` and ``delay`` faults of the
simulator ask; :meth:`SimNetwork.heal` makes the network whole again. Every random choice
comes from the simulation's one ``random.Random``, so a seed replays the same network.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..raft.types import Message, NodeId


class SimNetwork:
    def __init__(self, rng: random.Random, deliver_after: Callable[[float, Message], None]):
        self.rng = rng
        self._deliver_after = deliver_after
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.heal()

    def heal(self) -> None:
        """No partition, no loss, no duplicates, no spikes, a little jitter."""
        self.blocked = set()
        self.loss = self.dup = self.spike = 0.0
        self.jitter_ms = 2.0

    def cuts(self, frm: NodeId | None, to: NodeId | None) -> bool:
        """Whether a partition stands between ``frm`` and ``to`` (in that direction)."""
        return (frm, to) in self.blocked  # type: ignore[comparison-overlap]

    def isolate(self, nid: NodeId, everyone: list[NodeId]) -> None:
        self.blocked |= {(nid, o) for o in everyone} | {(o, nid) for o in everyone}

    def describe(self) -> str:
        return (
            f"blocked={len(self.blocked)} loss={self.loss} dup={self.dup} "
            f"jitter={self.jitter_ms} spike={self.spike}"
        )

    def send(self, m: Message) -> None:
        if m.to == m.frm:
            return
        if (m.frm, m.to) in self.blocked or self.rng.random() < self.loss:
            return
        delay = 0.5 + self.rng.uniform(0, self.jitter_ms)
        if self.spike and self.rng.random() < self.spike:
            delay += self.rng.uniform(50, 400)
        self._deliver_after(delay, m)
        if self.dup and self.rng.random() < self.dup:
            self._deliver_after(delay + self.rng.uniform(0, 30), m)

    def fault(
        self,
        faults: frozenset[str],
        lead: NodeId | None,
        alive: list[NodeId],
        everyone: list[NodeId],
    ) -> str:
        """Change the network at random within ``faults``; returns what was done."""
        f = faults
        choices = []
        if "partition" in f:
            choices += ["heal", "isolate_leader", "split", "random_cut"]
        if "asym" in f:
            choices += ["heal", "one_way", "leader_deaf", "leader_mute"]
        if "loss" in f:
            choices.append("loss")
        if "dup" in f:
            choices.append("dup")
        if "reorder" in f:
            choices.append("reorder")
        if "delay" in f:
            choices.append("delay")
        what = self.rng.choice(choices)
        if what == "heal":
            self.blocked = set()
        elif what == "isolate_leader" and lead is not None:
            self.blocked = {(lead, o) for o in everyone} | {(o, lead) for o in everyone}
        elif what == "split" and alive:
            shuffled = everyone[:]
            self.rng.shuffle(shuffled)
            minority = set(shuffled[: len(shuffled) // 2])
            self.blocked = {
                (a, b) for a in everyone for b in everyone if (a in minority) != (b in minority)
            }
        elif what == "random_cut":
            self.blocked = {
                (a, b) for a in everyone for b in everyone if a < b and self.rng.random() < 0.3
            }
            self.blocked |= {(b, a) for a, b in self.blocked}
        elif what == "one_way":
            self.blocked = {
                (a, b) for a in everyone for b in everyone if a != b and self.rng.random() < 0.25
            }
        elif what == "leader_deaf" and lead is not None:
            self.blocked = {(o, lead) for o in everyone}
        elif what == "leader_mute" and lead is not None:
            self.blocked = {(lead, o) for o in everyone}
        elif what == "loss":
            self.loss = self.rng.choice([0.0, 0.02, 0.1, 0.3])
        elif what == "dup":
            self.dup = self.rng.choice([0.0, 0.05, 0.2])
        elif what == "reorder":
            self.jitter_ms = self.rng.choice([2.0, 20.0, 60.0])
        elif what == "delay":
            self.spike = self.rng.choice([0.0, 0.01, 0.05])
        return what
