"""The weight planner under parameters other than the defaults: every knob of WeightParams
must change what the planner decides (a planner that fell back on the defaults somewhere
would pass every test run at the defaults), and each check of WeightParams.validate at its
edges."""

from __future__ import annotations

import dataclasses

import pytest

from hafleet_agent.metrics import HostMetrics
from hafleet_agent.weights import (
    MAX_REASON_CHARS,
    MemberInput,
    WeightParams,
    WeightPlanner,
    busy_fraction,
    capacity_score,
    clamp_weight,
    memory_factor,
    moved,
    scale_weight,
)

# An idle 4-core host with all its memory free; the fields the score does not read are 0.
IDLE = HostMetrics(
    **dict.fromkeys((f.name for f in dataclasses.fields(HostMetrics)), 0.0)
    | {"cpu_count": 4, "mem_total": 1000, "mem_available": 1000}
)
SATURATED = dataclasses.replace(IDLE, cpu_percent=100.0)
LOW_MEMORY = dataclasses.replace(IDLE, mem_available=100)  # 10 % available


def reporting(metrics: HostMetrics, at: float, **kw: object) -> MemberInput:
    """A member established long ago whose last report arrived at ``at``."""
    return MemberInput(metrics, at, **{"joined_at": -1000.0, **kw})  # type: ignore[arg-type]


def table(params: WeightParams, now: float = 0.0, **members: MemberInput) -> dict[str, int]:
    return WeightPlanner(params).plan(now, members).table


def test_the_planner_scores_with_its_own_headroom_and_memory_reserve() -> None:
    default = table(WeightParams(), idle=reporting(IDLE, 0.0), busy=reporting(SATURATED, 0.0))
    assert default == {"idle": 256, "busy": 26}  # keeps 10 % headroom
    half = WeightParams(min_headroom=0.5)
    assert table(half, idle=reporting(IDLE, 0.0), busy=reporting(SATURATED, 0.0)) == {
        "idle": 256,
        "busy": 128,
    }
    low = {"idle": reporting(IDLE, 0.0), "low": reporting(LOW_MEMORY, 0.0)}
    assert table(WeightParams(), **low) == {"idle": 256, "low": 128}  # 10 % of a 20 % reserve
    assert table(WeightParams(mem_reserve=0.4), **low) == {"idle": 256, "low": 64}
    assert table(WeightParams(mem_reserve=0.1), **low) == {"idle": 256, "low": 256}


def test_the_planner_smooths_with_its_own_alpha() -> None:
    for alpha, expected in ((0.5, 141), (1.0, 26), (0.25, 198)):
        planner = WeightPlanner(WeightParams(score_alpha=alpha))
        planner.plan(0.0, {"a": reporting(IDLE, 0.0), "b": reporting(IDLE, 0.0)})
        d = planner.plan(10.0, {"a": reporting(IDLE, 10.0), "b": reporting(SATURATED, 10.0)})
        assert d.table["b"] == expected, alpha


def test_the_planner_applies_its_own_dead_band() -> None:
    wide = WeightParams(score_alpha=1.0, deadband=0.5, deadband_min=0, min_commit_interval=0)
    narrow = dataclasses.replace(wide, deadband=0.0)
    half_busy = dataclasses.replace(IDLE, cpu_percent=50.0)
    for params, commits in ((wide, False), (narrow, True)):
        planner = WeightPlanner(params)
        planner.plan(0.0, {"a": reporting(IDLE, 0.0), "b": reporting(IDLE, 0.0)})
        d = planner.plan(1.0, {"a": reporting(IDLE, 1.0), "b": reporting(half_busy, 1.0)})
        assert d.table["b"] == 141 and d.commit is commits, params
    by_units = dataclasses.replace(narrow, deadband_min=200)
    planner = WeightPlanner(by_units)
    planner.plan(0.0, {"a": reporting(IDLE, 0.0), "b": reporting(IDLE, 0.0)})
    d = planner.plan(1.0, {"a": reporting(IDLE, 1.0), "b": reporting(half_busy, 1.0)})
    assert not d.commit and d.reason == "within the dead band"


def test_the_planner_rate_limits_with_its_own_interval() -> None:
    for interval, commits in ((0.0, True), (5.0, False), (0.5, True)):
        params = WeightParams(score_alpha=1.0, min_commit_interval=interval)
        planner = WeightPlanner(params)
        planner.plan(0.0, {"a": reporting(IDLE, 0.0), "b": reporting(IDLE, 0.0)})
        d = planner.plan(1.0, {"a": reporting(IDLE, 1.0), "b": reporting(SATURATED, 1.0)})
        assert d.commit is commits, interval
        if not commits:
            assert d.reason.startswith("rate limited for 4.0s: b 256->26")


def test_blackout_and_ramp_follow_the_parameters() -> None:
    params = WeightParams(blackout=4.0, ramp=8.0, blackout_fallback=100)
    members = {
        "old": reporting(SATURATED, 10.0),
        "new": MemberInput(IDLE, 10.0, joined_at=7.0),  # 3 s in: blackout
        "ramping": MemberInput(IDLE, 10.0, joined_at=2.0),  # 8 s in: half way up the ramp
        "done": MemberInput(IDLE, 10.0, joined_at=-2.0),  # 12 s in: its own weight
    }
    d = WeightPlanner(params).plan(10.0, members)
    assert d.modes == {"done": "scored", "new": "new", "old": "scored", "ramping": "ramp"}
    # conservative: the median of the established (26, 256) -> 26
    assert d.table == {"done": 256, "new": 26, "old": 26, "ramping": 141}
    fixed = dataclasses.replace(params, blackout_weight=200)
    assert WeightPlanner(fixed).plan(10.0, members).table["new"] == 200
    founding = {"x": MemberInput(IDLE, 0.0, joined_at=0.0), "y": MemberInput(None, None)}
    assert WeightPlanner(params).plan(0.0, founding).table == {"x": 100, "y": 100}
    no_ramp = dataclasses.replace(params, ramp=0.0)
    assert WeightPlanner(no_ramp).plan(10.0, members).modes["ramping"] == "scored"


def test_unhealthy_and_stale_weights_follow_the_parameters() -> None:
    params = WeightParams(unhealthy_weight=7, stale_after=2.0, stale_half_life=4.0, stale_floor=6)
    planner = WeightPlanner(params)
    members = {"a": reporting(IDLE, 0.0), "b": reporting(IDLE, 0.0)}
    assert planner.plan(0.0, members).table == {"a": 256, "b": 256}
    sick = {"a": reporting(IDLE, 1.0), "b": reporting(IDLE, 1.0, healthy=False)}
    assert planner.plan(1.0, sick).table == {"a": 256, "b": 7}
    # b's last report was at 0: stale from 2 s, one half-life (4 s) later at 6 s
    quiet = {"a": reporting(IDLE, 6.0), "b": reporting(IDLE, 0.0)}
    d = planner.plan(6.0, quiet)
    assert d.modes["b"] == "stale" and d.table["b"] == 7  # 6 + (7 - 6) / 2, rounded half up
    fresh = WeightPlanner(params)
    fresh.plan(0.0, members)
    d = fresh.plan(6.0, quiet)
    assert d.table["b"] == 131  # 6 + (256 - 6) / 2
    d = fresh.plan(10.0, {"a": reporting(IDLE, 10.0), "b": reporting(IDLE, 0.0)})
    assert d.table["b"] == 69  # two half-lives: 6 + 250 / 4 = 68.5, rounded half up
    assert WeightPlanner(params).plan(1.5, members).modes["b"] == "scored"
    assert WeightPlanner(params).plan(2.5, members).modes["b"] == "stale"


def test_validate_takes_the_edges_and_refuses_past_them() -> None:
    for ok in (
        WeightParams(min_headroom=0.0),
        WeightParams(min_headroom=1.0),
        WeightParams(mem_reserve=0.0),
        WeightParams(mem_reserve=1.0),
        WeightParams(score_alpha=1.0),
        WeightParams(deadband=0.0, deadband_min=0),
        WeightParams(min_commit_interval=0.0, blackout=0.0, ramp=0.0, stale_after=0.0),
        WeightParams(stale_half_life=0.001),
        WeightParams(blackout_weight=1, blackout_fallback=256, stale_floor=1, unhealthy_weight=256),
    ):
        WeightPlanner(ok)
    for bad, message in (
        (WeightParams(min_headroom=-0.01), "min_headroom must be in [0, 1]"),
        (WeightParams(min_headroom=1.01), "min_headroom must be in [0, 1]"),
        (WeightParams(mem_reserve=1.01), "mem_reserve must be in [0, 1]"),
        (WeightParams(mem_reserve=-0.01), "mem_reserve must be in [0, 1]"),
        (WeightParams(score_alpha=0.0), "score_alpha must be in (0, 1]"),
        (WeightParams(score_alpha=1.01), "score_alpha must be in (0, 1]"),
        (WeightParams(deadband=-0.01), "deadband and deadband_min must be >= 0"),
        (WeightParams(deadband_min=-1), "deadband and deadband_min must be >= 0"),
        (WeightParams(min_commit_interval=-1), "min_commit_interval must be >= 0"),
        (WeightParams(ramp=-0.5), "ramp must be >= 0"),
        (WeightParams(stale_after=-1), "stale_after must be >= 0"),
        (WeightParams(stale_half_life=0.0), "stale_half_life must be > 0"),
        (WeightParams(blackout_weight=0), "blackout_weight must be in 1..256"),
        (WeightParams(blackout_fallback=257), "blackout_fallback must be in 1..256"),
        (WeightParams(unhealthy_weight=0), "unhealthy_weight must be in 1..256"),
        (WeightParams(stale_floor=257), "stale_floor must be in 1..256"),
    ):
        with pytest.raises(ValueError) as info:
            WeightPlanner(bad)
        assert str(info.value) == message


def test_formula_pieces_at_their_edges() -> None:
    no_cores = dataclasses.replace(IDLE, cpu_count=0, load1=0.5)
    assert busy_fraction(no_cores) == 0.5  # counted as one core
    assert busy_fraction(dataclasses.replace(IDLE, cpu_percent=-5.0)) == 0.0
    assert busy_fraction(dataclasses.replace(IDLE, cpu_percent=40.0, load1=2.0)) == 0.5
    assert memory_factor(2000, 1000, 0.2) == 1.0  # more available than total: capped
    assert memory_factor(-5, 1000, 0.2) == 0.0
    assert memory_factor(100, 1000, 0.2) == 0.5
    assert memory_factor(100, -1, 0.2) == 1.0 and memory_factor(100, 1000, -0.1) == 1.0
    assert capacity_score(dataclasses.replace(IDLE, cpu_count=0)) == 1.0
    assert capacity_score(IDLE, WeightParams(min_headroom=0.0)) == 4.0
    assert [clamp_weight(x) for x in (-3.0, 0.4, 0.5, 255.5, 300.0)] == [1, 1, 1, 256, 256]
    strict = WeightParams(deadband=0.0, deadband_min=0)
    assert moved(10, 11, strict) and not moved(10, 10, strict)
    loose = WeightParams(deadband=0.5, deadband_min=0)
    assert not moved(100, 150, loose) and moved(100, 151, loose)


def test_small_totals_and_references_are_not_special() -> None:
    assert memory_factor(0, 1, 0.2) == 0.0  # one byte, none available: no capacity
    assert memory_factor(1, 1, 0.2) == 1.0
    assert scale_weight(0.5, 1.0) == 128  # a best score of one core is a reference too
    assert scale_weight(0.5, 0.5) == 256 and scale_weight(0.0, 0.0) == 256


def test_structural_reasons_list_every_member() -> None:
    planner = WeightPlanner(WeightParams(score_alpha=1.0))
    two = {"a": reporting(IDLE, 0.0), "b": reporting(IDLE, 0.0)}
    planner.plan(0.0, two)
    four = {**two, "c": reporting(IDLE, 1.0), "d": reporting(IDLE, 1.0)}
    assert planner.plan(1.0, four).reason == "joined: c, d"
    assert planner.plan(2.0, {"c": reporting(IDLE, 2.0), "d": reporting(IDLE, 2.0)}).reason == (
        "left: a, b"
    )
    pinned = {"c": reporting(IDLE, 3.0, override=9), "d": reporting(IDLE, 3.0)}
    assert planner.plan(3.0, pinned).reason == "c: normal -> override 9"
    back = {"c": reporting(IDLE, 4.0), "d": reporting(IDLE, 4.0)}
    assert planner.plan(4.0, back).reason == "c: override 9 -> normal"


def test_a_reason_of_exactly_the_limit_is_kept_whole() -> None:
    limit = MAX_REASON_CHARS
    names = {}
    # "joined: " + ids joined by ", ": pick ids whose reason is exactly the limit long
    prefix = "joined: "
    count = 10
    width = (limit - len(prefix) - 2 * (count - 1)) // count
    ids = [f"{i}".rjust(width, "m") for i in range(count)]
    pad = limit - len(prefix + ", ".join(ids))
    ids[-1] = "m" * pad + ids[-1]
    for mid in ids:
        names[mid] = reporting(IDLE, 1.0)
    planner = WeightPlanner()
    planner.plan(0.0, {"a": reporting(IDLE, 0.0)})
    d = planner.plan(1.0, {"a": reporting(IDLE, 1.0), **names})
    assert d.reason == prefix + ", ".join(sorted(ids)) and len(d.reason) == limit
    longer = {"m" + mid: inp for mid, inp in names.items()}
    planner = WeightPlanner()
    planner.plan(0.0, {"a": reporting(IDLE, 0.0)})
    d = planner.plan(1.0, {"a": reporting(IDLE, 1.0), **longer})
    assert len(d.reason) == limit and d.reason.endswith("...")
