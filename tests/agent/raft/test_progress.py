"""Progress and Inflights on their own: the leader's view of one follower through probe,
replicate and snapshot, acknowledgements, rejections (fresh and stale) and flow control."""

from __future__ import annotations

import pytest

from hafleet_agent.raft.progress import Inflights, Progress, ProgressState


def replicating(match: int, max_inflight: int = 4) -> Progress:
    pr = Progress(next_index=match + 1, max_inflight=max_inflight)
    pr.maybe_update(match)
    pr.become_replicate()
    return pr


def test_a_new_progress_probes() -> None:
    pr = Progress(next_index=7, max_inflight=3)
    assert (pr.match, pr.next, pr.state) == (0, 7, ProgressState.PROBE)
    assert not pr.probe_sent and not pr.recent_active and not pr.learner
    assert (pr.pending_snapshot, pr.snapshot_elapsed) == (0, 0)
    assert pr.inflights.size == 3 and len(pr.inflights) == 0
    assert Progress(1, 1, learner=True).learner


def test_repr() -> None:
    pr = Progress(next_index=4, max_inflight=2)
    assert repr(pr) == "Progress(match=0, next=4, probe)"
    pr.learner = True
    pr.become_replicate()
    assert repr(pr) == "Progress(match=0, next=1, replicate, learner)"


def test_inflights_are_bounded_and_freed_in_order() -> None:
    inf = Inflights(3)
    assert not inf.full() and len(inf) == 0
    for last in (5, 7, 9):
        inf.add(last)
    assert inf.full() and len(inf) == 3
    with pytest.raises(AssertionError):
        inf.add(11)
    inf.free_le(6)
    assert list(inf.q) == [7, 9] and not inf.full()
    inf.free_le(7)  # an acknowledgement of exactly 7 frees it
    assert list(inf.q) == [9]
    inf.free_le(8)
    assert list(inf.q) == [9]
    inf.add(11)
    inf.free_first()
    assert list(inf.q) == [11]
    inf.free_first()
    inf.free_first()  # on an empty window: nothing to do
    assert len(inf) == 0
    inf.add(1)
    inf.reset()
    assert len(inf) == 0


def test_maybe_update_takes_news_only() -> None:
    pr = Progress(next_index=5, max_inflight=2)
    pr.probe_sent = True
    assert pr.maybe_update(4)
    assert (pr.match, pr.next, pr.probe_sent) == (4, 5, False)
    pr.probe_sent = True
    assert not pr.maybe_update(4)  # the same index again: no news
    assert pr.probe_sent  # and the probe is still outstanding
    assert not pr.maybe_update(2)
    assert (pr.match, pr.next) == (4, 5)
    pr.optimistic_update(9)
    assert pr.next == 10
    assert pr.maybe_update(6)
    assert (pr.match, pr.next) == (6, 10)  # next never moves back on an acknowledgement
    assert pr.maybe_update(12)
    assert (pr.match, pr.next) == (12, 13)


def test_become_replicate_and_probe_restart_after_the_match() -> None:
    pr = Progress(next_index=10, max_inflight=2)
    pr.maybe_update(6)
    pr.probe_sent = True
    pr.become_replicate()
    assert (pr.state, pr.next, pr.probe_sent) == (ProgressState.REPLICATE, 7, False)
    pr.inflights.add(8)
    pr.optimistic_update(8)
    pr.become_probe()
    assert (pr.state, pr.next) == (ProgressState.PROBE, 7)
    assert len(pr.inflights) == 0


def test_a_snapshot_then_probe_resumes_after_the_snapshot() -> None:
    pr = Progress(next_index=3, max_inflight=2)
    pr.maybe_update(2)
    pr.become_snapshot(20)
    assert (pr.state, pr.pending_snapshot) == (ProgressState.SNAPSHOT, 20)
    assert pr.is_paused()
    pr.snapshot_elapsed = 4
    pr.become_probe()
    assert (pr.state, pr.next) == (ProgressState.PROBE, 21)
    assert (pr.pending_snapshot, pr.snapshot_elapsed) == (0, 0)
    # a follower that got further than the snapshot meanwhile resumes after its match
    pr2 = Progress(next_index=3, max_inflight=2)
    pr2.become_snapshot(20)
    pr2.maybe_update(25)
    pr2.become_probe()
    assert pr2.next == 26


def test_a_rejection_in_replicate_falls_back_to_the_match() -> None:
    pr = replicating(5)
    pr.optimistic_update(9)
    assert pr.maybe_decr_to(7, match_hint=6)
    assert pr.next == 6  # match + 1, the hint is not used in replicate


def test_a_stale_rejection_in_replicate_changes_nothing() -> None:
    pr = replicating(5)
    pr.optimistic_update(9)
    assert not pr.maybe_decr_to(5, match_hint=0)  # at the match: already acknowledged
    assert not pr.maybe_decr_to(3, match_hint=0)
    assert (pr.state, pr.next) == (ProgressState.REPLICATE, 10)
    assert pr.maybe_decr_to(6, match_hint=0)  # just above the match: a real rejection


def test_a_rejection_of_the_probe_moves_next_back_to_the_hint() -> None:
    pr = Progress(next_index=10, max_inflight=2)
    pr.probe_sent = True
    assert pr.maybe_decr_to(9, match_hint=4)
    assert (pr.next, pr.probe_sent) == (5, False)
    pr.probe_sent = True
    assert not pr.maybe_decr_to(9, match_hint=1)  # not the probe in flight: stale
    assert not pr.maybe_decr_to(3, match_hint=1)
    assert (pr.next, pr.probe_sent) == (5, True)


def test_a_probe_rejection_never_goes_below_the_match_or_one() -> None:
    pr = Progress(next_index=10, max_inflight=2)
    pr.maybe_update(3)
    pr.next = 10
    assert pr.maybe_decr_to(9, match_hint=0)
    assert pr.next == 4  # match + 1, not the hint's 1
    fresh = Progress(next_index=2, max_inflight=2)
    assert fresh.maybe_decr_to(1, match_hint=-5)
    assert fresh.next == 1
    high = Progress(next_index=6, max_inflight=2)
    assert high.maybe_decr_to(5, match_hint=40)  # a hint past the rejection: the rejection
    assert high.next == 5


def test_is_paused_by_state() -> None:
    pr = Progress(next_index=1, max_inflight=2)
    assert not pr.is_paused()
    pr.probe_sent = True
    assert pr.is_paused()
    pr.become_replicate()
    assert not pr.is_paused()
    pr.inflights.add(1)
    assert not pr.is_paused()
    pr.inflights.add(2)
    assert pr.is_paused()
    pr.become_snapshot(5)
    assert pr.is_paused()
