"""Commit-only appends (``COMMIT_ONLY``): a leader tells the followers in step its new commit
index with an append that needs no answer; a follower answers it only when it rejects it."""

from __future__ import annotations

import random

from hafleet_agent.raft.coalesce import coalesce
from hafleet_agent.raft.core import Config
from hafleet_agent.raft.rawnode import RawNode
from hafleet_agent.raft.ready import ReadyEffects, drain
from hafleet_agent.raft.types import COMMIT_ONLY, Entry, EntryType, Message
from hafleet_agent.raft.types import MessageType as MT

IDS = ("n1", "n2", "n3")


def _e(term: int, index: int) -> Entry:
    return Entry(term, index, EntryType.NORMAL, b"x%d" % index)


class Node:
    """One core with an in-memory disk; what it sends is kept."""

    def __init__(self, nid: str) -> None:
        self.raw = RawNode(Config(nid, random.Random(1)))
        self.raw.bootstrap([(i, b"") for i in IDS])
        self.sent: list[Message] = []
        self.fx = ReadyEffects(
            persist=lambda rd: None,
            send=self.sent.append,
            restore=lambda s: None,
            apply=lambda e: None,
        )
        drain(self.raw, self.fx)
        self.sent.clear()

    def step(self, m: Message) -> list[Message]:
        self.raw.step(m)
        drain(self.raw, self.fx)
        out = list(self.sent)
        self.sent.clear()
        return out


def _app(index: int, log_term: int, entries: list[Entry], commit: int, ctx: bytes = b"") -> Message:
    return Message(
        MT.APP, to="n2", frm="n1", term=2, log_term=log_term, index=index,
        entries=tuple(entries), commit=commit, context=ctx,
    )  # fmt: skip


def _follower_with_entry_4() -> tuple[Node, int]:
    n = Node("n2")
    last = n.raw.basic_status().last_index
    out = n.step(_app(last, 1, [_e(2, last + 1)], last))
    assert [(m.type, m.index, m.reject) for m in out] == [(MT.APP_RESP, last + 1, False)]
    return n, last + 1


def test_a_follower_takes_a_commit_only_append_without_answering() -> None:
    n, i = _follower_with_entry_4()
    assert n.step(_app(i, 2, [], i, COMMIT_ONLY)) == []
    assert n.raw.basic_status().commit == i


def test_a_follower_answers_a_commit_only_append_it_rejects() -> None:
    n, i = _follower_with_entry_4()
    out = n.step(_app(i + 3, 2, [], i, COMMIT_ONLY))  # entries it does not have
    assert [(m.type, m.reject) for m in out] == [(MT.APP_RESP, True)]


def test_an_append_with_entries_is_answered_whatever_its_context() -> None:
    n, i = _follower_with_entry_4()
    out = n.step(_app(i, 2, [_e(2, i + 1)], i, COMMIT_ONLY))
    assert [(m.type, m.index, m.reject) for m in out] == [(MT.APP_RESP, i + 1, False)]


def test_a_plain_empty_append_is_still_answered() -> None:
    n, i = _follower_with_entry_4()
    out = n.step(_app(i, 2, [], i))  # a probe, say
    assert [(m.type, m.index, m.reject) for m in out] == [(MT.APP_RESP, i, False)]


def test_a_stale_commit_only_append_below_the_commit_is_not_answered() -> None:
    n, i = _follower_with_entry_4()
    n.step(_app(i, 2, [], i, COMMIT_ONLY))
    assert n.step(_app(i - 1, 1, [], i - 1, COMMIT_ONLY)) == []
    assert [m.index for m in n.step(_app(i - 1, 1, [], i - 1))] == [i]


def test_coalescing_keeps_an_answer_for_every_entry() -> None:
    quiet = _app(4, 2, [], 4, COMMIT_ONLY)
    real = _app(4, 2, [_e(2, 5)], 4)
    later_quiet = _app(5, 2, [], 5, COMMIT_ONLY)
    assert coalesce([quiet, real], 64) == [_app(4, 2, [_e(2, 5)], 4)]
    assert coalesce([real, later_quiet], 64) == [_app(4, 2, [_e(2, 5)], 5)]
    both = coalesce([_app(4, 2, [], 4, COMMIT_ONLY), _app(4, 2, [], 5, COMMIT_ONLY)], 64)
    assert both == [_app(4, 2, [], 5, COMMIT_ONLY)]
    other = Message(MT.APP, to="n2", frm="n1", term=2, log_term=2, index=4, context=b"x")
    assert coalesce([quiet, other], 64) == [quiet, other]
