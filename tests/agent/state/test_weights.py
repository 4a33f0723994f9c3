"""Capacity -> weight: the formula (docs/weights.md's worked example, exactly), smoothing,
dead band, rate limit, blackout and ramp, stale fallback, overrides, drain; properties."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hafleet_agent.metrics import HostMetrics
from hafleet_agent.weights import (
    DEFAULT_PARAMS,
    MAX_REASON_CHARS,
    Decision,
    MemberInput,
    WeightParams,
    WeightPlanner,
    busy_fraction,
    capacity_score,
    memory_factor,
    moved,
    round_half_up,
    scale_weight,
    scale_weights,
)

GiB = 1 << 30


def host(
    cpu_count: int, cpu_percent: float, load1: float, mem_total_gib: float, mem_avail_gib: float
) -> HostMetrics:
    total, avail = int(mem_total_gib * GiB), int(mem_avail_gib * GiB)
    return HostMetrics(
        timestamp=0.0,
        cpu_count=cpu_count,
        cpu_percent=cpu_percent,
        load1=load1,
        load5=load1,
        load15=load1,
        mem_total=total,
        mem_available=avail,
        mem_percent=100.0 * (total - avail) / total,
        swap_percent=0.0,
        disk_percent=None,
        disk_free=None,
        net_sent_rate=None,
        net_recv_rate=None,
        process_rss=1,
        uptime=1.0,
    )


# docs/weights.md, "A worked example": keep the two in step.
A = host(8, 25.0, 2.0, 16, 8)
B = host(4, 10.0, 0.4, 8, 1)
C = host(16, 50.0, 20.0, 32, 16)


def fleet(now: float, **overrides: MemberInput) -> dict[str, MemberInput]:
    """a, b, c established long ago and reporting at ``now``."""
    members = {
        mid: MemberInput(m, now, joined_at=0.0) for mid, m in zip("abc", (A, B, C), strict=True)
    }
    members.update(overrides)
    return members


def started(now: float = 100.0, params: WeightParams = DEFAULT_PARAMS) -> WeightPlanner:
    planner = WeightPlanner(params)
    first = planner.plan(now, fleet(now))
    assert first == Decision(
        {"a": 256, "b": 94, "c": 66}, True, "initial table", dict.fromkeys("abc", "scored")
    )
    return planner


# ---- the formula -------------------------------------------------------------------------


def test_worked_example() -> None:
    assert [busy_fraction(m) for m in (A, B, C)] == [0.25, 0.1, 1.0]
    assert memory_factor(B.mem_available, B.mem_total, 0.2) == 0.625
    assert memory_factor(A.mem_available, A.mem_total, 0.2) == 1.0
    scores = [capacity_score(m) for m in (A, B, C)]
    assert scores == pytest.approx([6.2, 2.275, 1.6], abs=1e-12)
    # 256 * 2.275 / 6.2 = 93.94 -> 94; 256 * 1.6 / 6.2 = 66.06 -> 66
    assert scale_weights(dict(zip("abc", scores, strict=True))) == {"a": 256, "b": 94, "c": 66}
    started()


def test_formula_edges() -> None:
    assert busy_fraction(host(4, 0.0, 0.0, 1, 1)) == 0.0
    assert busy_fraction(host(4, 0.0, 9.0, 1, 1)) == 1.0  # run queue beyond the cores
    assert busy_fraction(host(2, 100.0, 0.0, 1, 1)) == 1.0
    assert memory_factor(0, 8, 0.2) == 0.0
    assert memory_factor(5, 0, 0.2) == 1.0  # unknown total: no penalty
    assert memory_factor(1, 100, 0.0) == 1.0  # no reserve: memory ignored
    saturated = host(8, 100.0, 30.0, 16, 8)
    assert capacity_score(saturated) == pytest.approx(0.8)  # keeps min_headroom of 8 cores
    no_floor = WeightParams(min_headroom=0.0)
    assert capacity_score(saturated, no_floor) == 0.0
    assert scale_weights({"x": 0.0, "y": 0.0}) == {"x": 256, "y": 256}
    assert scale_weights({"x": 1000.0, "y": 1.0}) == {"x": 256, "y": 1}  # floor 1
    assert scale_weights({}) == {}
    assert scale_weight(0.5, 256.0) == 1 and scale_weight(1.5, 256.0) == 2
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.49)] == [1, 2, 3, 2]


def test_moved_uses_both_thresholds() -> None:
    assert not moved(100, 110)  # 10% is not more than 10%
    assert moved(100, 111)
    assert moved(100, 89)
    assert not moved(10, 12)  # more than 10%, but not more than 2 units
    assert moved(10, 13)
    assert moved(0, 3) and not moved(0, 2)


# ---- smoothing, dead band, rate limit ----------------------------------------------------------


def test_scores_are_smoothed_per_report() -> None:
    planner = started(100.0)
    busy_b = host(4, 90.0, 0.4, 8, 1)  # score 4 * (0.1 + 0.9 * 0.1) * 0.625 = 0.475
    members = fleet(110.0, b=MemberInput(busy_b, 110.0, 0.0))
    d = planner.plan(110.0, members)
    # (2.275 + 0.475) / 2 = 1.375; 256 * 1.375 / 6.2 = 56.77
    assert planner.smoothed_score("b") == pytest.approx(1.375)
    assert d.table == {"a": 256, "b": 57, "c": 66}
    assert (d.commit, d.reason) == (True, "moved: b 94->57")
    # The same report again is not a new sample.
    again = planner.plan(111.0, members)
    assert planner.smoothed_score("b") == pytest.approx(1.375)
    assert (again.table, again.commit, again.reason) == (d.table, False, "unchanged")


def test_dead_band_suppresses_small_moves() -> None:
    planner = started(100.0)
    # b a little busier: score 4 * (0.1 + 0.9 * 0.85) * 0.625 = 2.1625,
    # smoothed (2.275 + 2.1625) / 2 = 2.21875 -> 256 * 2.21875 / 6.2 = 91.6 -> 92.
    small = planner.plan(200.0, fleet(200.0, b=MemberInput(host(4, 15.0, 0.4, 8, 1), 200.0)))
    assert (small.table["b"], small.commit, small.reason) == (92, False, "within the dead band")
    # Small moves do not ratchet: they are measured against the committed table.
    c_busier = MemberInput(
        host(16, 50.0, 20.0, 32, 4), 201.0
    )  # memory 0.625: 1.0, smoothed 1.3 -> 54
    d = planner.plan(
        201.0, fleet(201.0, b=MemberInput(host(4, 15.0, 0.4, 8, 1), 200.0), c=c_busier)
    )
    assert d.table == {"a": 256, "b": 92, "c": 54}
    assert (d.commit, d.reason) == (True, "moved: c 66->54")


def test_rate_limit_holds_moves_but_not_structural_changes() -> None:
    planner = started(100.0)
    idle_c = MemberInput(host(16, 0.0, 0.0, 32, 16), 101.0)  # score 16 -> c becomes the best
    held = planner.plan(101.0, fleet(101.0, c=idle_c))
    # c smoothed: (1.6 + 16) / 2 = 8.8: a 256 * 6.2 / 8.8 = 180.4, b 66.2, c 256
    assert held.table == {"a": 180, "b": 66, "c": 256}
    assert (held.commit, held.reason) == (
        False,
        "rate limited for 4.0s: a 256->180, b 94->66, c 66->256",
    )
    still = planner.plan(104.5, fleet(101.0, c=idle_c))
    assert not still.commit and still.reason.startswith("rate limited for 0.5s")
    # A drain does not wait.
    drained = planner.plan(104.5, fleet(101.0, c=idle_c, b=MemberInput(B, 101.0, draining=True)))
    assert drained.table == {"a": 180, "b": 0, "c": 256}
    assert (drained.commit, drained.reason) == (
        True,
        "b: normal -> drain; a 256->180, c 66->256",
    )
    assert drained.modes["b"] == "drain"


def test_a_proposal_awaiting_its_commit_is_not_repeated_at_once() -> None:
    planner = started(100.0)
    committed = {"a": 256, "b": 94, "c": 66}
    drain_b = fleet(100.0, b=MemberInput(B, 100.0, draining=True))
    first = planner.plan(101.0, drain_b, current=committed)
    assert first.commit and first.table["b"] == 0
    # The state has not applied it yet: the planner does not propose it again right away ...
    waiting = planner.plan(102.0, drain_b, current=committed)
    assert (waiting.commit, waiting.reason) == (False, "awaiting the commit of: b: drain")
    # ... but does once the proposal looks lost,
    assert planner.plan(106.0, drain_b, current=committed).commit
    # and is content once the state holds it.
    done = planner.plan(107.0, drain_b, current=first.table)
    assert (done.commit, done.reason) == (False, "unchanged")


def test_a_new_leader_continues_from_the_committed_table() -> None:
    committed = {"a": 256, "b": 94, "c": 66}
    assert WeightPlanner().plan(100.0, fleet(100.0), current=committed).reason == "unchanged"
    near = {"a": 256, "b": 90, "c": 66}
    d = WeightPlanner().plan(100.0, fleet(100.0), current=near)
    assert (d.commit, d.reason) == (False, "within the dead band")
    far = {"a": 256, "b": 94, "c": 30}
    d = WeightPlanner().plan(100.0, fleet(100.0), current=far)
    assert (d.commit, d.reason) == (True, "moved: c 30->66")
    drained = {"a": 256, "b": 0, "c": 66}  # b was drained, and is no more
    d = WeightPlanner().plan(100.0, fleet(100.0), current=drained)
    assert (d.commit, d.reason) == (True, "b: back from drain")


def test_membership_changes_commit_at_once() -> None:
    planner = started(100.0)
    members = fleet(101.0)
    del members["c"]
    d = planner.plan(101.0, members)
    # Without c, b's weight stays proportional to a's.
    assert (d.table, d.commit, d.reason) == ({"a": 256, "b": 94}, True, "left: c")
    d = planner.plan(102.0, {**members, "d": MemberInput(None, None, joined_at=102.0)})
    assert (d.table["d"], d.modes["d"], d.commit, d.reason) == (94, "new", True, "joined: d")


# ---- blackout, ramp, founding -----------------------------------------------------------------


def test_blackout_then_ramp() -> None:
    planner = started(100.0)

    # d joins at 200, as capable as a. Established weights 256, 94, 66: the median is 94.
    def at(now: float, metrics: HostMetrics | None = A) -> Decision:
        d_input = MemberInput(metrics, None if metrics is None else now, joined_at=200.0)
        return planner.plan(now, fleet(now, d=d_input))

    blackout = at(200.0, None)  # no report yet
    assert (blackout.table["d"], blackout.modes["d"]) == (94, "new")
    assert at(209.9).table["d"] == 94
    # Ramp from 94 to 256 over 20 s after the 10 s blackout.
    assert (at(215.0).table["d"], at(215.0).modes["d"]) == (135, "ramp")  # 94 + 162 / 4 = 134.5
    assert at(220.0).table["d"] == 175  # 94 + 81
    end = at(230.0)
    assert (end.table, end.modes["d"]) == ({"a": 256, "b": 94, "c": 66, "d": 256}, "scored")


def test_blackout_never_raises_a_weak_member() -> None:
    planner = started(100.0)
    weak = MemberInput(host(2, 90.0, 1.8, 4, 2), 200.0, joined_at=195.0)  # 0.38 -> 16
    d = planner.plan(200.0, fleet(200.0, d=weak))
    assert (d.table["d"], d.modes["d"]) == (16, "new")


def test_founding_members_share_the_fallback_and_a_fixed_blackout_weight() -> None:
    members = {
        mid: MemberInput(m, 3.0, joined_at=0.0) for mid, m in zip("abc", (A, B, C), strict=True)
    }
    d = WeightPlanner().plan(3.0, members)
    # Nobody is established: each gets the fallback 128, or its own weight if lower.
    assert d.table == {"a": 128, "b": 94, "c": 66}
    fixed = WeightPlanner(WeightParams(blackout_weight=10)).plan(3.0, members)
    assert fixed.table == {"a": 10, "b": 10, "c": 10}


# ---- stale, unhealthy, overrides, drain ------------------------------------------------------


def test_stale_member_decays_towards_the_floor() -> None:
    planner = started(100.0)

    def at(now: float) -> Decision:
        return planner.plan(now, fleet(now, b=MemberInput(B, 100.0)))

    assert at(110.0).modes["b"] == "scored"  # 10 s old: not yet stale
    d = at(110.5)
    assert (d.modes["b"], d.table["b"]) == ("stale", 93)  # 0.5 s into the decay: 92.9
    assert at(140.0).table["b"] == 48  # one half-life after 110: 1 + 93 / 2 = 47.5
    assert at(170.0).table["b"] == 24  # 1 + 93 / 4 = 24.25
    assert at(1000.0).table["b"] == 1
    back = planner.plan(1001.0, fleet(1001.0))
    assert (back.modes["b"], back.table["b"]) == ("scored", 94)


def test_a_stale_best_member_leaves_the_reference() -> None:
    planner = started(100.0)
    d = planner.plan(200.0, fleet(200.0, a=MemberInput(A, 100.0)))
    # a decayed: 1 + 255 * 0.5 ** (90 / 30) = 32.9; b is now the best: c = 256 * 1.6 / 2.275
    assert d.table == {"a": 33, "b": 256, "c": 180}
    assert d.modes == {"a": "stale", "b": "scored", "c": "scored"}


def test_a_member_that_never_reported_decays_from_the_conservative_weight() -> None:
    planner = started(100.0)
    silent = MemberInput(None, None, joined_at=100.0)
    d = planner.plan(110.0, fleet(110.0, d=silent))
    assert (d.modes["d"], d.table["d"]) == ("stale", 94)
    assert planner.plan(140.0, fleet(140.0, d=silent)).table["d"] == 48


def test_a_new_leader_counts_silence_from_when_it_took_over() -> None:
    # A leader that took over at 5000 plans at once: it has no report from an established
    # member (joined long ago, joined_at 0) yet, not even its own. The member is silent since
    # 5000, not since 0: it keeps the conservative weight instead of the stale floor (1), which
    # a fresh lab's first table gave the leader itself for five seconds (HAProxy then sent it
    # almost nothing).
    planner = WeightPlanner(WeightParams())
    early = MemberInput(None, None, joined_at=0.0, listening_since=5000.0)
    d = planner.plan(5000.1, {"a": early, "b": MemberInput(A, 5000.0, joined_at=0.0)})
    assert (d.modes["a"], d.table["a"]) == ("stale", 256)
    # Without the take-over time the silence counts from joining: the floor.
    never = MemberInput(None, None, joined_at=0.0)
    fresh = WeightPlanner(WeightParams())
    assert fresh.plan(5000.1, {"a": never, "b": MemberInput(A, 5000.0)}).table["a"] == 1
    # Silence still decays from the take-over on: one half-life past stale_after.
    d = planner.plan(5040.0, {"a": early, "b": MemberInput(A, 5039.0, joined_at=0.0)})
    assert d.table["a"] == 129  # 1 + (256 - 1) * 0.5 ** (30 / 30) = 128.5


def test_a_member_that_leaves_is_forgotten() -> None:
    planner = started(100.0)
    silent = MemberInput(None, None, joined_at=100.0)
    assert planner.plan(140.0, fleet(140.0, d=silent)).table["d"] == 48
    assert "d" not in planner.plan(141.0, fleet(141.0)).table
    # Back under the same id, silent again: it decays from today's conservative weight (b is
    # draining, so the median of a and c: 66), not from the one it had the first time (94):
    # 1 + 65 * 0.5 ** (40 / 30) = 26.8
    again = MemberInput(None, None, joined_at=150.0)
    b_drains = MemberInput(B, 200.0, draining=True)
    assert planner.plan(200.0, fleet(200.0, b=b_drains, d=again)).table["d"] == 27
    # A member's smoothed score starts afresh too.
    planner.plan(201.0, fleet(201.0, b=MemberInput(host(4, 90.0, 0.4, 8, 1), 201.0)))
    assert planner.smoothed_score("b") == pytest.approx(1.375)
    del_b = fleet(202.0)
    del del_b["b"]
    planner.plan(202.0, del_b)
    assert planner.smoothed_score("b") is None
    planner.plan(203.0, fleet(203.0, b=MemberInput(B, 203.0, joined_at=203.0)))
    assert planner.smoothed_score("b") == pytest.approx(2.275)


def test_unhealthy_override_drain_precedence() -> None:
    planner = started(100.0)
    d = planner.plan(101.0, fleet(101.0, a=MemberInput(A, 101.0, healthy=False)))
    # a is out of the reference: b is the best now.
    assert d.table == {"a": 1, "b": 256, "c": 180}
    assert (d.modes["a"], d.commit, d.reason.split(";")[0]) == (
        "unhealthy",
        True,
        "a: normal -> unhealthy",
    )
    d = planner.plan(102.0, fleet(102.0, a=MemberInput(A, 102.0, healthy=False, override=10)))
    assert (d.table["a"], d.modes["a"], d.commit) == (10, "override", True)
    assert d.reason.startswith("a: unhealthy -> override 10")
    d = planner.plan(
        103.0, fleet(103.0, a=MemberInput(A, 103.0, healthy=False, override=10, draining=True))
    )
    assert (d.table["a"], d.modes["a"], d.commit) == (0, "drain", True)
    d = planner.plan(104.0, fleet(104.0, a=MemberInput(A, 104.0, override=200)))
    assert d.table == {"a": 200, "b": 256, "c": 180}
    assert d.reason.startswith("a: drain -> override 200")
    d = planner.plan(105.0, fleet(105.0, a=MemberInput(A, 105.0, override=201)))
    assert (d.commit, d.reason) == (True, "a: override 200 -> override 201")


def test_inputs_and_params_are_checked() -> None:
    for bad in (0, 257):
        with pytest.raises(ValueError, match="override"):
            MemberInput(override=bad)
    for params in (
        WeightParams(score_alpha=0.0),
        WeightParams(min_headroom=1.5),
        WeightParams(mem_reserve=-0.1),
        WeightParams(deadband=-1),
        WeightParams(blackout=-1),
        WeightParams(stale_half_life=0),
        WeightParams(stale_floor=0),
        WeightParams(blackout_weight=300),
    ):
        with pytest.raises(ValueError):
            WeightPlanner(params)


def test_reasons_fit_the_state_machine() -> None:
    planner = started(100.0)
    crowd = {f"node-with-a-long-name-{i}": MemberInput(joined_at=100.0) for i in range(40)}
    d = planner.plan(101.0, {**fleet(101.0), **crowd})
    assert d.commit and len(d.reason) == MAX_REASON_CHARS and d.reason.endswith("...")


# ---- properties ------------------------------------------------------------------------------

metrics_strategy = st.builds(
    lambda cores, cpu, load, total, frac: host(cores, cpu, load, total, total * frac),
    st.integers(1, 128),
    st.floats(0, 100),
    st.floats(0, 200),
    st.integers(1, 512),
    st.floats(0, 1),
)


@settings(max_examples=300, deadline=None)
@given(
    metrics_strategy,
    st.lists(metrics_strategy, max_size=4),
    st.integers(0, 64),
    st.floats(0, 100),
    st.floats(0, 200),
    st.floats(0, 1),
)
def test_more_spare_capacity_never_lowers_the_weight(
    x: HostMetrics,
    others: list[HostMetrics],
    more_cores: int,
    less_cpu: float,
    less_load: float,
    more_mem: float,
) -> None:
    better = dataclasses.replace(
        x,
        cpu_count=x.cpu_count + more_cores,
        cpu_percent=max(0.0, x.cpu_percent - less_cpu),
        load1=max(0.0, x.load1 - less_load),
        mem_available=x.mem_available + int(more_mem * (x.mem_total - x.mem_available)),
    )
    assert capacity_score(better) >= capacity_score(x)

    def weight_of(m: HostMetrics) -> int:
        members = {f"o{i}": MemberInput(o, 1000.0) for i, o in enumerate(others)}
        members["x"] = MemberInput(m, 1000.0)
        table = WeightPlanner().plan(1000.0, members).table
        assert all(1 <= w <= 256 for w in table.values())
        return table["x"]

    assert weight_of(better) >= weight_of(x)


member_strategy = st.builds(
    MemberInput,
    metrics=st.none() | metrics_strategy,
    last_report_time=st.none() | st.floats(0, 400),
    joined_at=st.floats(0, 400),
    healthy=st.booleans(),
    draining=st.booleans(),
    override=st.none() | st.integers(1, 256),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 20),
            st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), member_strategy, max_size=4),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    ),
    st.builds(
        WeightParams,
        score_alpha=st.floats(0.01, 1),
        blackout=st.floats(0, 30),
        ramp=st.floats(0, 30),
        stale_after=st.floats(0, 30),
        stale_floor=st.integers(1, 256),
        unhealthy_weight=st.integers(1, 256),
        blackout_weight=st.none() | st.integers(1, 256),
    ),
)
def test_weights_stay_in_bounds_and_zero_means_drain(
    steps: list[tuple[float, dict[str, MemberInput], bool]], params: WeightParams
) -> None:
    planner = WeightPlanner(params)
    now = 0.0
    committed: dict[str, int] | None = None
    for dt, members, pass_current in steps:
        now += dt
        d = planner.plan(now, members, current=committed if pass_current else None)
        assert set(d.table) == set(members)
        for mid, w in d.table.items():
            if members[mid].draining:
                assert w == 0
            else:
                assert 1 <= w <= 256
        assert len(d.reason) <= MAX_REASON_CHARS
        if d.commit:
            committed = d.table
