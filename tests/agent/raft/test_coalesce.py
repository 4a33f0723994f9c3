"""raft/coalesce.py: a ready batch's appends and acknowledgements to a peer, merged.

The merge rules one by one, then whole groups driven through the interaction harness with
and without coalescing under the same seeded load: every node ends with the same log,
commit index and applied entries, with fewer messages sent."""

from __future__ import annotations

import random

import pytest
from interaction import Env

from hafleet_agent.raft.coalesce import coalesce
from hafleet_agent.raft.types import Entry, EntryType, Message
from hafleet_agent.raft.types import MessageType as MT


def _e(term: int, index: int) -> Entry:
    return Entry(term, index, EntryType.NORMAL, b"x%d" % index)


def _app(to: str, index: int, log_term: int, entries: list[Entry], commit: int) -> Message:
    return Message(
        MT.APP, to=to, frm="n1", term=2, log_term=log_term, index=index,
        entries=tuple(entries), commit=commit,
    )  # fmt: skip


def _ack(index: int, *, reject: bool = False, to: str = "n1") -> Message:
    return Message(MT.APP_RESP, to=to, frm="n2", term=2, index=index, reject=reject)


def test_contiguous_appends_to_a_peer_merge_in_order() -> None:
    a = _app("n2", 4, 1, [_e(2, 5)], 4)
    other = _app("n3", 4, 1, [_e(2, 5)], 4)
    b = _app("n2", 5, 2, [_e(2, 6), _e(2, 7)], 5)
    c = _app("n2", 7, 2, [], 6)  # commit only
    out = coalesce([a, other, b, c], 64)
    assert out == [_app("n2", 4, 1, [_e(2, 5), _e(2, 6), _e(2, 7)], 6), other]


@pytest.mark.parametrize(
    "b",
    [
        _app("n2", 6, 2, [_e(2, 7)], 5),  # a gap: not the continuation
        _app("n2", 5, 1, [_e(2, 6)], 5),  # the previous term does not match
        _app("n2", 5, 2, [_e(2, 6)], 3),  # a lower commit index
        Message(MT.APP, to="n2", frm="n1", term=3, log_term=2, index=5, commit=5),  # new term
    ],
)
def test_appends_that_do_not_continue_stay_apart(b: Message) -> None:
    a = _app("n2", 4, 1, [_e(2, 5)], 4)
    assert coalesce([a, b], 64) == [a, b]


def test_a_message_between_two_appends_keeps_them_apart() -> None:
    a = _app("n2", 4, 1, [_e(2, 5)], 4)
    hb = Message(MT.HEARTBEAT, to="n2", frm="n1", term=2, commit=4)
    b = _app("n2", 5, 2, [_e(2, 6)], 5)
    assert coalesce([a, hb, b], 64) == [a, hb, b]


def test_merged_append_stays_within_max_entries() -> None:
    a = _app("n2", 4, 1, [_e(2, 5), _e(2, 6)], 4)
    b = _app("n2", 6, 2, [_e(2, 7), _e(2, 8)], 4)
    c = _app("n2", 8, 2, [_e(2, 9)], 4)
    out = coalesce([a, b, c], 4)
    assert out == [_app("n2", 4, 1, [_e(2, i) for i in range(5, 9)], 4), c]


def test_acknowledgements_merge_into_the_highest_rejections_do_not() -> None:
    assert coalesce([_ack(5), _ack(6), _ack(8)], 64) == [_ack(8)]
    assert coalesce([_ack(6), _ack(5)], 64) == [_ack(6), _ack(5)]  # not a higher one
    rej = _ack(5, reject=True)
    assert coalesce([_ack(4), rej, _ack(6)], 64) == [_ack(4), rej, _ack(6)]
    assert coalesce([_ack(4), _ack(6, to="n3")], 64) == [_ack(4), _ack(6, to="n3")]


def test_nothing_to_merge_returns_the_same_list() -> None:
    msgs = [_app("n2", 4, 1, [_e(2, 5)], 4), _app("n3", 4, 1, [_e(2, 5)], 4)]
    assert coalesce(msgs, 64) is msgs


class _CoalescingEnv(Env):
    """The interaction harness, each ready's messages coalesced as the agent's driver does."""

    def process_ready(self, node):  # type: ignore[no-untyped-def]
        before = len(self.net)
        done = super().process_ready(node)
        sent = self.net[before:]
        merged = coalesce([m for _, m in sent], node.options.max_entries)
        self.net[before:] = [(node.id, m) for m in merged]
        return done


def _run(env: Env, seed: int) -> int:
    """A seeded load on a 3-node group; returns the messages sent."""
    rng = random.Random(seed)
    for cmd in ("add-nodes 3", "bootstrap", "stabilize", "campaign 1", "stabilize"):
        env.run(cmd + " quiet=true")
    sent = 0
    for step in range(120):
        for _ in range(rng.randint(0, 4)):
            env.run(f"propose 1 v{step}-{_} quiet=true")
        nid = rng.choice(["n1", "n2", "n3"])
        before = len(env.net)
        if rng.random() < 0.5:
            env.process_ready(env.nodes[nid])
        else:
            env.deliver(nid)
        sent += max(0, len(env.net) - before)
        if rng.random() < 0.05:
            env.run("tick-heartbeat 1 quiet=true")
    env.run("stabilize quiet=true")
    return sent


@pytest.mark.parametrize("seed", range(8))
def test_a_group_ends_the_same_with_coalesced_messages(seed: int) -> None:
    plain, merged = Env(), _CoalescingEnv()
    sent_plain, sent_merged = _run(plain, seed), _run(merged, seed)
    for nid in ("n1", "n2", "n3"):
        a, b = plain.nodes[nid], merged.nodes[nid]
        assert a.applied == b.applied and a.applied
        assert a.raw is not None and b.raw is not None
        sa, sb = a.raw.basic_status(), b.raw.basic_status()
        assert (sa.commit, sa.last_index) == (sb.commit, sb.last_index)
    assert sent_merged < sent_plain


def test_the_core_copies_every_field_of_a_message_it_sends() -> None:
    """core.Raft.send spells dataclasses.replace out field by field (hot path): a new field
    of Message must be added there too."""
    from dataclasses import fields

    assert [f.name for f in fields(Message)] == [
        "type", "to", "frm", "term", "log_term", "index", "entries", "commit", "reject",
        "reject_hint", "snapshot", "context",
    ]  # fmt: skip
