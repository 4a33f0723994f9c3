"""``hafleet-agent`` with wall-clock timestamps of its Raft vote traffic, for ``make bench``.

    HAFLEET_TRACE=FILE python bench/hafleet_traced.py run --node-id ... (the agent's flags)

The agent's code is not changed: three methods are wrapped before the command line runs,
and each appends one line to FILE (line-buffered; every member writes its own file):

    <unix time> send <TYPE> <from> <to> <term> <reject>   Outbox.send_raft (a ready batch,
                                                          after its fsync)
    <unix time> recv <TYPE> <from> <to> <term> <reject>   RawNode.step (the frame decoded)
    <unix time> save <ms> <entries> <term>                DiskStorage.save with a hard state
                                                          (term or vote changed): its fsync

Only vote traffic (PRE_VOTE, VOTE and their answers) and the new leader's first APP and
HEARTBEAT are written, so the cost is a few lines per election. ``bench/compare.py`` reads
them to split an election into hops: message in flight (send → the peer steps it), the
peer's work (step → its answer leaves, fsync included) and the candidate's own steps.
"""

from __future__ import annotations

import os
import sys
import time

from hafleet_agent import cli
from hafleet_agent import wal as storage
from hafleet_agent.node.outbox import Outbox
from hafleet_agent.raft import rawnode
from hafleet_agent.raft.types import MessageType as MT

VOTE = {MT.PRE_VOTE, MT.PRE_VOTE_RESP, MT.VOTE, MT.VOTE_RESP}
LEAD = {MT.APP, MT.HEARTBEAT}

_out = open(os.environ["HAFLEET_TRACE"], "a", buffering=1)  # noqa: SIM115 - process lifetime
_lead_terms: set[int] = set()


def _emit(*parts: object) -> None:
    _out.write(f"{time.time():.6f} " + " ".join(str(p) for p in parts) + "\n")


def _wrap() -> None:
    step, send, save = rawnode.RawNode.step, Outbox.send_raft, storage.DiskStorage.save

    def traced_step(self, m):  # noqa: ANN001, ANN202
        if m.type in VOTE:
            _emit("recv", m.type.name, m.frm, m.to, m.term, int(m.reject))
        return step(self, m)

    def traced_send(self, m):  # noqa: ANN001, ANN202
        if m.type in VOTE:
            _emit("send", m.type.name, m.frm, m.to, m.term, int(m.reject))
        elif m.type in LEAD and m.term not in _lead_terms:
            _lead_terms.add(m.term)
            _emit("send", m.type.name, m.frm, m.to, m.term, 0)
        return send(self, m)

    def traced_save(self, hard_state, entries):  # noqa: ANN001, ANN202
        t = time.perf_counter()
        try:
            return save(self, hard_state, entries)
        finally:
            if hard_state is not None:
                ms = (time.perf_counter() - t) * 1000
                _emit("save", f"{ms:.3f}", len(entries), hard_state.term)

    rawnode.RawNode.step = traced_step
    Outbox.send_raft = traced_send
    storage.DiskStorage.save = traced_save


if __name__ == "__main__":
    _wrap()
    sys.exit(cli.main(sys.argv[1:]))
