"""The pure-Python pickers: distribution, fairness, smoothness, updates, bad input."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from hafleet_agent.picker import (
    LeastLoadedPicker,
    NoCandidate,
    RandomPicker,
    RoundRobinPicker,
    SmoothWeightedPicker,
    make_picker,
    weights_from_members,
)


def picks(picker, n: int) -> list[str]:
    return [picker.pick() for _ in range(n)]


# --- smooth weighted round-robin --------------------------------------------------------------


def test_swrr_5_1_1_is_nginx_sequence() -> None:
    p = SmoothWeightedPicker({"a": 5, "b": 1, "c": 1})
    assert "".join(picks(p, 7)) == "aabacaa"
    # and again: the running scores are back at 0 after a full cycle
    assert "".join(picks(p, 7)) == "aabacaa"


def test_swrr_every_window_of_total_weight_is_exact() -> None:
    weights = {"a": 7, "b": 3, "c": 2, "d": 1}
    total = sum(weights.values())
    p = SmoothWeightedPicker(weights)
    seq = picks(p, total * 50)
    for start in range(0, len(seq), total):
        assert Counter(seq[start : start + total]) == weights


def test_swrr_is_smooth() -> None:
    """At every prefix, each member's count is within 1 of its exact share."""
    weights = {"a": 256, "b": 94, "c": 66}
    total = sum(weights.values())
    p = SmoothWeightedPicker(weights)
    seen: Counter[str] = Counter()
    for i in range(1, total * 3 + 1):
        seen[p.pick()] += 1
        for k, w in weights.items():
            assert abs(seen[k] - i * w / total) < 1.0 + 1e-9, (i, k, seen)


def test_swrr_zero_weight_never_picked_and_all_zero_raises() -> None:
    p = SmoothWeightedPicker({"a": 2, "b": 0, "c": 1})
    assert "b" not in picks(p, 300)
    with pytest.raises(NoCandidate):
        SmoothWeightedPicker({"a": 0}).pick()
    with pytest.raises(NoCandidate):
        SmoothWeightedPicker({}).pick()


def test_swrr_update_keeps_running_scores_and_follows_new_weights() -> None:
    p = SmoothWeightedPicker({"a": 1, "b": 1})
    picks(p, 3)
    p.update({"a": 3, "b": 1, "c": 0})
    assert p.weights == {"a": 3, "b": 1}
    seq = picks(p, 400)
    share = Counter(seq)
    assert share["a"] == pytest.approx(300, abs=2)
    assert share["b"] == pytest.approx(100, abs=2)


@pytest.mark.parametrize("bad", [{"a": -1}, {"a": 1.5}, {"a": True}, {"a": "3"}])
def test_bad_weights_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        SmoothWeightedPicker(bad)


# --- round-robin ------------------------------------------------------------------------------


def test_round_robin_cycles_in_order_ignoring_weights() -> None:
    p = RoundRobinPicker({"a": 9, "b": 1, "c": 4})
    assert picks(p, 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_update_continues_after_the_last_pick() -> None:
    p = RoundRobinPicker(["a", "b", "c"])
    assert picks(p, 2) == ["a", "b"]
    p.update(["a", "b", "c", "d"])
    assert picks(p, 3) == ["c", "d", "a"]
    p.update({"a": 1, "b": 0, "c": 1, "d": 1})  # b drained
    assert picks(p, 4) == ["c", "d", "a", "c"]
    p.update([])
    with pytest.raises(NoCandidate):
        p.pick()


def test_round_robin_fairness_over_many_picks() -> None:
    p = RoundRobinPicker([f"n{i}" for i in range(7)])
    share = Counter(picks(p, 7000))
    assert set(share.values()) == {1000}


# --- random -----------------------------------------------------------------------------------


def test_random_is_uniform() -> None:
    p = RandomPicker(["a", "b", "c", "d"], random.Random(7))
    n = 40_000
    share = Counter(picks(p, n))
    for k in "abcd":
        assert share[k] / n == pytest.approx(0.25, abs=0.01)


def test_random_skips_zero_weight() -> None:
    p = RandomPicker({"a": 1, "b": 0}, random.Random(1))
    assert set(picks(p, 100)) == {"a"}
    with pytest.raises(NoCandidate):
        RandomPicker([]).pick()


# --- power of two choices ---------------------------------------------------------------------


def test_p2c_spreads_equal_load_evenly() -> None:
    p = LeastLoadedPicker(["a", "b", "c"], random.Random(3))
    share = Counter(picks(p, 30_000))
    for k in "abc":
        assert share[k] / 30_000 == pytest.approx(1 / 3, abs=0.02)


def test_p2c_prefers_the_less_loaded_of_the_two() -> None:
    p = LeastLoadedPicker(["a", "b"], random.Random(5))
    p.in_flight["a"] = 5
    assert set(picks(p, 50)) == {"b"}
    # the most loaded of three is never picked: it loses every pair it is drawn in
    p = LeastLoadedPicker(["a", "b", "c"], random.Random(5))
    p.in_flight.update({"a": 9, "b": 1, "c": 1})
    assert "a" not in picks(p, 300)


def _mean_spread(choose, release, in_flight: dict[str, int], rng: random.Random) -> float:
    held: list[str] = []
    spreads = []
    for _ in range(5_000):
        held.append(choose())
        if len(held) > 50:
            release(held.pop(rng.randrange(len(held))))
        spreads.append(max(in_flight.values()) - min(in_flight.values()))
    return sum(spreads) / len(spreads)


def test_p2c_keeps_in_flight_balanced_under_load() -> None:
    """50 requests in flight over 5 members, released in random order: two choices keep the
    spread of the in-flight counts well under half of what one random choice gives."""
    ids = [f"n{i}" for i in range(5)]
    p = LeastLoadedPicker(ids, random.Random(11))
    p2c = _mean_spread(p.acquire, p.release, p.in_flight, random.Random(12))

    counts = dict.fromkeys(ids, 0)
    rng = random.Random(13)

    def one_choice() -> str:
        k = rng.choice(ids)
        counts[k] += 1
        return k

    def release(k: str) -> None:
        counts[k] -= 1

    single = _mean_spread(one_choice, release, counts, random.Random(12))
    assert p2c < 3.5 < 6.0 < single


def test_p2c_weights_scale_the_load() -> None:
    """A member of weight 3 takes about 3 times the requests in flight of one of weight 1."""
    p = LeastLoadedPicker({"big": 3, "small": 1}, random.Random(2))
    for _ in range(400):
        p.acquire()
    assert p.in_flight["big"] == pytest.approx(300, abs=3)


def test_p2c_request_context_releases_even_on_error() -> None:
    p = LeastLoadedPicker(["a"])
    with pytest.raises(RuntimeError), p.request() as member:
        assert member == "a" and p.in_flight["a"] == 1
        raise RuntimeError("boom")
    assert p.in_flight["a"] == 0
    with pytest.raises(ValueError):
        p.release("a")


def test_p2c_member_that_left_is_released_then_forgotten() -> None:
    p = LeastLoadedPicker(["a", "b"], random.Random(0))
    held = [p.acquire() for _ in range(4)]
    p.update(["b"])
    for k in held:
        p.release(k)
    assert "a" not in p.in_flight
    assert set(picks(p, 20)) == {"b"}
    with pytest.raises(NoCandidate):
        LeastLoadedPicker([]).pick()


# --- from /v1/members -------------------------------------------------------------------------

MEMBERS = [
    {"id": "a", "service_addr": "10.0.0.1:80", "weight": 200, "draining": False},
    {"id": "b", "service_addr": "10.0.0.2:80", "weight": 100, "draining": False},
    {"id": "c", "service_addr": "10.0.0.3:80", "weight": None, "draining": False},
    {"id": "d", "service_addr": "10.0.0.4:80", "weight": 0, "draining": True},
    {"id": "e", "service_addr": None, "weight": 50, "draining": False},
]


def test_weights_from_members() -> None:
    assert weights_from_members(MEMBERS, "weighted") == {"a": 200, "b": 100, "c": 100}
    assert weights_from_members(MEMBERS, "roundrobin") == {"a": 1, "b": 1, "c": 1}


@pytest.mark.parametrize("strategy", ["random", "roundrobin", "weighted", "leastconn"])
def test_make_picker_gives_only_candidates(strategy: str) -> None:
    p = make_picker(strategy, weights_from_members(MEMBERS, strategy), random.Random(4))
    assert set(picks(p, 200)) == {"a", "b", "c"}


def test_make_picker_refuses_an_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        make_picker("fastest", {"a": 1})
