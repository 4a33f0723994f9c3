"""Tests for the porcupine-style linearizability checker of key-value histories."""

from __future__ import annotations

import dataclasses
import math
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hafleet_agent.sim.linearizability import CheckResult, Op, check_kv_history, freeze

KINDS = ("put", "get", "cas", "del")


def put(key: str, value: object, call: float, ret: float | None, client: int = 1, **kw) -> Op:
    return Op(client=client, kind="put", key=key, value=value, call=call, ret=ret, **kw)


def get(key: str, output: object, call: float, ret: float | None, client: int = 1, **kw) -> Op:
    return Op(client=client, kind="get", key=key, output=output, call=call, ret=ret, **kw)


def cas(
    key: str,
    expected: object,
    value: object,
    output: bool | None,
    call: float,
    ret: float | None,
    client: int = 1,
) -> Op:
    return Op(
        client=client,
        kind="cas",
        key=key,
        expected=expected,
        value=value,
        output=output,
        call=call,
        ret=ret,
    )


def delete(key: str, call: float, ret: float | None, client: int = 1) -> Op:
    return Op(client=client, kind="del", key=key, call=call, ret=ret)


def assert_violation(result: CheckResult, key: str) -> None:
    assert not result.ok
    assert not result.timed_out
    assert result.key == key
    assert result.longest_prefix is not None
    assert result.unexplained


# --- hand-written histories -------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check_kv_history([])
    assert result.ok
    assert result.key is None and result.longest_prefix is None and result.unexplained is None


def test_sequential_history_is_linearizable() -> None:
    history = [
        get("x", None, 0, 1),
        put("x", 1, 2, 3),
        get("x", 1, 4, 5, client=2),
        cas("x", 1, 2, True, 6, 7),
        get("x", 2, 8, 9, client=3),
        delete("x", 10, 11),
        get("x", None, 12, 13),
    ]
    assert check_kv_history(history).ok


def test_input_order_does_not_matter() -> None:
    history = [get("x", 1, 4, 5), put("x", 1, 0, 1), get("x", None, -2, -1)]
    assert check_kv_history(history).ok


def test_stale_read_after_completed_write_is_a_violation() -> None:
    stale = get("x", 1, 6, 7, client=2)
    history = [put("x", 1, 0, 1), put("x", 2, 2, 3), stale]
    result = check_kv_history(history)
    assert_violation(result, "x")
    assert result.longest_prefix == history[:2]
    assert result.unexplained == [stale]


def test_lost_acknowledged_write_is_a_violation() -> None:
    lost = get("x", None, 2, 3, client=2)
    result = check_kv_history([put("x", 1, 0, 1), lost])
    assert_violation(result, "x")
    assert result.unexplained == [lost]


@pytest.mark.parametrize("seen", [None, 1])
def test_read_concurrent_with_write_may_see_either_value(seen: object) -> None:
    history = [put("x", 1, 0, 10), get("x", seen, 2, 5, client=2)]
    assert check_kv_history(history).ok


def test_concurrent_read_cannot_see_a_value_nobody_wrote() -> None:
    result = check_kv_history([put("x", 1, 0, 10), get("x", 2, 2, 5, client=2)])
    assert_violation(result, "x")


def test_reads_cannot_go_back_in_time() -> None:
    # The write is concurrent with both reads, but once a read saw it a later one must too.
    history = [put("x", 1, 0, 10), get("x", 1, 1, 2, client=2), get("x", None, 3, 4, client=3)]
    assert_violation(check_kv_history(history), "x")


def test_ops_touching_at_the_same_instant_are_concurrent() -> None:
    # ret == call proves nothing about order: treat them as concurrent (never a false alarm).
    assert check_kv_history([put("x", 1, 0, 1), get("x", None, 1, 2, client=2)]).ok
    # ... but a strictly later call must see the write.
    assert_violation(check_kv_history([put("x", 1, 0, 1), get("x", None, 1.5, 2)]), "x")


def test_cas_success_needs_the_expected_value() -> None:
    assert check_kv_history([put("x", 1, 0, 1), cas("x", 1, 2, True, 2, 3), get("x", 2, 4, 5)]).ok
    history = [put("x", 1, 0, 1), cas("x", 7, 2, True, 2, 3)]
    assert_violation(check_kv_history(history), "x")


def test_cas_failure_needs_a_different_value() -> None:
    assert check_kv_history([put("x", 1, 0, 1), cas("x", 7, 2, False, 2, 3), get("x", 1, 4, 5)]).ok
    history = [put("x", 1, 0, 1), cas("x", 1, 2, False, 2, 3)]
    assert_violation(check_kv_history(history), "x")


def test_failed_cas_does_not_write() -> None:
    history = [put("x", 1, 0, 1), cas("x", 7, 2, False, 2, 3), get("x", 2, 4, 5)]
    assert_violation(check_kv_history(history), "x")


def test_cas_with_expected_none_requires_absence() -> None:
    assert check_kv_history([cas("x", None, 1, True, 0, 1), get("x", 1, 2, 3)]).ok
    assert check_kv_history([put("x", 5, 0, 1), cas("x", None, 1, False, 2, 3)]).ok
    assert_violation(check_kv_history([put("x", 5, 0, 1), cas("x", None, 1, True, 2, 3)]), "x")


def test_two_sequential_successful_cas_from_the_same_value_is_a_violation() -> None:
    history = [put("x", 0, 0, 1), cas("x", 0, 1, True, 2, 3), cas("x", 0, 1, True, 4, 5, client=2)]
    result = check_kv_history(history)
    assert_violation(result, "x")
    assert result.unexplained == [history[2]]


def test_two_concurrent_cas_from_the_same_value_cannot_both_succeed() -> None:
    first = cas("x", 0, 1, True, 2, 5)
    both = [put("x", 0, 0, 1), first, cas("x", 0, 2, True, 3, 6, client=2)]
    assert_violation(check_kv_history(both), "x")
    one = [put("x", 0, 0, 1), first, cas("x", 0, 2, False, 3, 6, client=2)]
    assert check_kv_history(one).ok


def test_del_semantics() -> None:
    base = [put("x", 1, 0, 1), delete("x", 2, 3)]
    assert check_kv_history([*base, get("x", None, 4, 5)]).ok
    assert_violation(check_kv_history([*base, get("x", 1, 4, 5)]), "x")
    assert check_kv_history([*base, cas("x", None, 3, True, 4, 5), get("x", 3, 6, 7)]).ok
    assert_violation(check_kv_history([*base, cas("x", 1, 3, True, 4, 5)]), "x")
    # Deleting a missing key is fine and leaves it missing.
    assert check_kv_history([delete("y", 0, 1), get("y", None, 2, 3)]).ok


def test_putting_none_is_a_delete() -> None:
    history = [put("x", 1, 0, 1), put("x", None, 2, 3), cas("x", None, 2, True, 4, 5)]
    assert check_kv_history(history).ok


def test_indeterminate_put_that_later_shows_up_is_fine() -> None:
    history = [put("x", 1, 0, 1), put("x", 2, 2, None), get("x", 2, 50, 51, client=2)]
    assert check_kv_history(history).ok


def test_indeterminate_put_never_seen_is_fine() -> None:
    history = [put("x", 1, 0, 1), put("x", 2, 2, None), get("x", 1, 50, 51, client=2)]
    assert check_kv_history(history).ok


def test_indeterminate_put_takes_effect_at_most_once() -> None:
    history = [
        put("x", 1, 0, 1),
        put("x", 2, 2, None),
        get("x", 2, 3, 4, client=2),
        get("x", 1, 5, 6, client=2),
    ]
    assert_violation(check_kv_history(history), "x")


def test_indeterminate_put_cannot_take_effect_before_its_call() -> None:
    history = [get("x", 2, 0, 1, client=2), put("x", 2, 5, None)]
    assert_violation(check_kv_history(history), "x")


def test_indeterminate_cas_may_or_may_not_apply() -> None:
    base = [put("x", 1, 0, 1), cas("x", 1, 2, None, 2, None)]
    assert check_kv_history([*base, get("x", 2, 3, 4, client=2)]).ok
    assert check_kv_history([*base, get("x", 1, 3, 4, client=2)]).ok


def test_indeterminate_cas_applies_only_if_its_precondition_holds() -> None:
    history = [put("x", 1, 0, 1), cas("x", 5, 2, None, 2, None), get("x", 2, 3, 4, client=2)]
    assert_violation(check_kv_history(history), "x")


def test_indeterminate_get_is_ignored() -> None:
    assert check_kv_history([put("x", 1, 0, 1), get("x", "garbage", 2, None)]).ok


def test_definitely_failed_ops_are_dropped() -> None:
    failed = put("x", 9, 0, 1, ok=False)
    assert check_kv_history([failed, get("x", None, 2, 3)]).ok
    assert_violation(check_kv_history([failed, get("x", 9, 2, 3)]), "x")
    # A failed read says nothing, whatever it recorded.
    assert check_kv_history([get("x", "junk", 0, 1, ok=False)]).ok


def test_keys_are_checked_independently_and_in_sorted_order() -> None:
    history = [
        put("b", 1, 0, 1),
        get("b", 2, 2, 3),  # violation on b
        put("a", 1, 0, 10),
        get("a", 1, 2, 3),  # fine on a
        put("c", 1, 0, 1),
        get("c", 3, 2, 3),  # violation on c too, but b comes first
    ]
    assert_violation(check_kv_history(history), "b")
    # Each key only sees its own writes: a put on "a" never explains a read on "b".
    assert_violation(check_kv_history([put("a", 2, 0, 1), get("b", 2, 2, 3)]), "b")


def test_structured_values_compare_canonically() -> None:
    history = [
        put("x", {"a": [1, 2], "b": {"c": None}}, 0, 1),
        get("x", {"b": {"c": None}, "a": (1, 2)}, 2, 3),
        cas("x", {"a": [1, 2], "b": {"c": None}}, [True], True, 4, 5),
        get("x", [True], 6, 7),
    ]
    assert check_kv_history(history).ok
    assert_violation(check_kv_history([put("x", [True], 0, 1), get("x", [1], 2, 3)]), "x")
    assert freeze({"a": 1, "b": 2}) == freeze({"b": 2, "a": 1})
    assert freeze(True) != freeze(1)
    hash(freeze({"s": {1, 2}, "l": [{"k": "v"}]}))


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (Op(client=1, kind="incr", key="x", call=0, ret=1), "unknown op kind"),
        (put("x", 1, 5, 4), "returns before"),
        (cas("x", 1, 2, None, 0, 1), "bool output"),
    ],
)
def test_malformed_ops_are_rejected(op: Op, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_kv_history([op])


def test_step_budget_is_shared_across_keys() -> None:
    def sequential(key: str) -> list[Op]:
        return [put(key, 1, 0, 1), get(key, 1, 2, 3), cas(key, 1, 2, True, 4, 5)]

    needed = next(m for m in range(1, 100) if check_kv_history(sequential("a"), max_steps=m).ok)
    both = sequential("a") + sequential("b")
    result = check_kv_history(both, max_steps=needed)
    assert not result.ok and result.timed_out and result.key == "b"
    assert check_kv_history(both, max_steps=2 * needed).ok


def test_timeout_is_reported_as_unknown() -> None:
    history = [put("x", v, 0, 10, client=v) for v in range(8)] + [get("x", 99, 20, 21)]
    result = check_kv_history(history, max_steps=10)
    assert not result.ok and result.timed_out and result.key == "x"
    assert "UNKNOWN" in result.explain()
    assert "NOT linearizable" not in result.explain()


def test_memoisation_keeps_many_concurrent_writes_tractable() -> None:
    # 12 concurrent writes of the same value and an impossible read: 12! orders, but only
    # 2**12 distinct (linearized set, state) configurations.
    writes = [put("x", 1, 0, 10, client=c) for c in range(12)]
    result = check_kv_history([*writes, get("x", 2, 20, 21)], max_steps=200_000)
    assert_violation(result, "x")
    assert len(result.longest_prefix or []) == 12


def test_crashed_no_ops_do_not_blow_up_the_search() -> None:
    # 30 crashed cas ops whose precondition never holds: each would double the search space
    # if it were tried as a (no-op) linearization step.
    crashed = [cas("x", 100 + c, 5, None, 0.5, None, client=c) for c in range(30)]
    history = [put("x", 0, 0, 1), *crashed, get("x", 0, 2, 3), get("x", 7, 4, 5)]
    result = check_kv_history(history, max_steps=100_000)
    assert_violation(result, "x")


def test_crashed_writes_are_tried_only_where_they_make_a_difference() -> None:
    # Each read needs its own crashed write just before it. Trying useless runs of crashed
    # writes (c3 then c1 before "get -> 1": c3 is overwritten unseen) makes the exhaustive
    # search behind the final bad read exponential in their number.
    crashed = [put("x", v, 0.5, None, client=10 + v) for v in range(1, 13)]
    history = [put("x", 0, 0, 1), *crashed]
    t = 2.0
    for v in range(1, 13):
        history += [get("x", v, t, t + 1), put("x", 0, t + 2, t + 3)]
        t += 4
    assert check_kv_history(history, max_steps=50_000).ok
    bad = [*history, get("x", "bogus", t, t + 1)]
    assert_violation(check_kv_history(bad, max_steps=50_000), "x")


def test_crashed_writes_of_unread_values_are_interchangeable() -> None:
    # 40 crashed writes of values nobody reads; each failed cas needs one of them to have
    # happened just before it (the value was not 0 then). Which ones does not matter: without
    # treating those values as one, an exhaustive search tries C(40, 10) combinations.
    lost = [put("x", f"lost-{c}", 0.5, None, client=100 + c) for c in range(40)]
    history = [put("x", 0, 0, 1), *lost]
    t = 2.0
    for _ in range(10):
        history += [cas("x", 0, 1, False, t, t + 1), put("x", 0, t + 2, t + 3)]
        t += 4
    assert check_kv_history(history, max_steps=100_000).ok
    bad = [*history, get("x", "bogus", t, t + 1)]
    assert_violation(check_kv_history(bad, max_steps=100_000), "x")


def test_each_crashed_write_takes_effect_at_most_once() -> None:
    twins = [put("x", 1, 0.5, None, client=10 + c) for c in range(3)]
    history = [put("x", 0, 0, 1), *twins]
    t = 2.0
    for _ in range(3):
        history += [get("x", 1, t, t + 1), put("x", 0, t + 2, t + 3)]
        t += 4
    assert check_kv_history(history).ok
    history.append(get("x", 1, t, t + 1))  # a fourth resurrection of 1: nothing left to do it
    assert_violation(check_kv_history(history), "x")


def test_explain_is_readable() -> None:
    history = [
        put("x", 1, 0, 1, client=1),
        cas("x", 1, 2, True, 2, 3, client=2),
        put("x", 3, 3.5, None, client=4),
        get("x", 1, 4, 5, client=3),
        get("y", None, 0, 1, client=3),
    ]
    result = check_kv_history(history)
    assert result.explain() == "\n".join(
        [
            "key 'x': NOT linearizable",
            "longest linearization found (2 ops):",
            "  1. [0, 1]             client 1: put('x', 1)",
            "  2. [2, 3]             client 2: cas('x', 1 -> 2) -> ok",
            "state after it: 'x' = 2",
            "none of these ops can take effect next:",
            "  [3.5, ?)           client 4: put('x', 3) (indeterminate)"
            "  <- indeterminate; taking effect here does not help either",
            "  [4, 5]             client 3: get('x') -> 1  <- reads 1, but the value is 2",
        ]
    )
    assert check_kv_history([]).explain() == "history is linearizable"


# --- property tests ---------------------------------------------------------------------------

VALUES = st.one_of(
    st.integers(0, 3),
    st.none(),
    st.sampled_from([{"a": 1}, [1, 2], "s"]),
)
NEVER_WRITTEN = "never-written-value"


def assign_clients(ops: list[Op]) -> list[Op]:
    """Give every op a client that is idle during it (a crashed op retires its client)."""
    free_at: list[float] = []
    out = []
    for op in sorted(ops, key=lambda o: o.call):
        ret = math.inf if op.ret is None else op.ret
        client = next((c for c, t in enumerate(free_at) if t < op.call), len(free_at))
        if client == len(free_at):
            free_at.append(ret)
        free_at[client] = ret
        out.append(dataclasses.replace(op, client=client))
    return out


@st.composite
def linearizable_histories(draw: st.DrawFn) -> list[Op]:
    """A random sequential execution against a dict, with intervals widened around each op's
    linearization point (so that the sequential order stays a valid linearization), sprinkled
    with crashed and failed ops, shuffled."""
    keys = draw(st.sampled_from([["a"], ["a", "b"], ["a", "b", "c"]]))
    n = draw(st.integers(0, 40))
    store: dict[str, object] = {}
    ops: list[Op] = []
    for i in range(n + 1):
        point = 10 * i
        call = point - draw(st.integers(0, 30))
        ret: float | None = point + draw(st.integers(0, 30))
        key = draw(st.sampled_from(keys))
        kind = "get" if i == n else draw(st.sampled_from(KINDS))  # always end with a read
        fate = "done" if i == n else draw(st.sampled_from(["done"] * 5 + ["crash", "fail"]))
        applies = fate == "done" or (fate == "crash" and draw(st.booleans()))
        current = store.get(key)
        value = draw(VALUES) if kind in ("put", "cas") else None
        expected = None
        output: object = None
        if kind == "cas":
            expected = current if draw(st.booleans()) else draw(VALUES)
            output = freeze(current) == freeze(expected)
            applies = applies and output
        elif kind == "get":
            output = current
        if fate == "crash":
            ret = None
            output = None if kind != "get" else draw(VALUES)  # a crashed get's read is junk
        elif fate == "fail":
            output = draw(VALUES) if kind == "get" else output  # a failed op's output is junk
        if applies and kind in ("put", "cas"):
            store[key] = value
        elif applies and kind == "del":
            store.pop(key, None)
        op = Op(
            client=0,
            kind=kind,
            key=key,
            value=value,
            expected=expected,
            call=call,
            ret=ret,
            output=output,
            ok=fate != "fail",
        )
        ops.append(op)
    return draw(st.permutations(assign_clients(ops)))


@settings(max_examples=200, deadline=None)
@given(linearizable_histories())
def test_widened_sequential_executions_are_linearizable(history: list[Op]) -> None:
    result = check_kv_history(history)
    assert result.ok, result.explain()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(linearizable_histories(), st.data())
def test_a_read_of_a_never_written_value_is_caught(history: list[Op], data: st.DataObject) -> None:
    reads = [i for i, op in enumerate(history) if op.kind == "get" and op.ok and op.ret is not None]
    i = data.draw(st.sampled_from(reads))
    corrupted = dataclasses.replace(history[i], output=NEVER_WRITTEN)
    history[i] = corrupted
    result = check_kv_history(history)
    assert_violation(result, corrupted.key)
    assert all(op is not corrupted for op in result.longest_prefix or [])
    assert NEVER_WRITTEN in result.explain()


def reference_linearizable(history: list[Op]) -> bool:
    """The definition, searched naively (memoised on exact configurations only).

    Some order of the completed ops and of any subset of the crashed writes must respect real
    time and replay correctly against a dict; a crashed cas applies iff it can.
    """
    ops = [o for o in history if o.ok and not (o.kind == "get" and o.ret is None)]
    dead_ends: set[tuple[frozenset[int], tuple[tuple[str, object], ...]]] = set()

    def search(placed: frozenset[int], store: tuple[tuple[str, object], ...]) -> bool:
        pending = [i for i in range(len(ops)) if i not in placed]
        if all(ops[i].ret is None for i in pending):
            return True  # the crashed writes left over never took effect
        if (placed, store) in dead_ends:
            return False
        current = dict(store)
        for i in pending:
            op = ops[i]
            if any(ops[j].ret is not None and ops[j].ret < op.call for j in pending):
                continue  # a pending op returned before this one was called
            value = current.get(op.key)
            after = dict(current)
            if op.kind == "get":
                fits = freeze(op.output) == value
            elif op.kind == "cas":
                matches = value == freeze(op.expected)
                fits = op.ret is None or op.output == matches
                if matches:
                    after[op.key] = freeze(op.value)
            else:
                fits = True
                after[op.key] = freeze(op.value) if op.kind == "put" else None
            new_store = tuple(sorted((k, v) for k, v in after.items() if v is not None))
            if fits and search(placed | {i}, new_store):
                return True
        dead_ends.add((placed, store))
        return False

    return search(frozenset(), ())


@st.composite
def small_random_histories(draw: st.DrawFn) -> list[Op]:
    """Arbitrary (mostly not linearizable) histories: tiny value domain, many crashed ops,
    timestamp ties. 3 is written but never read, so it exercises the "unseen value" path."""
    ops = []
    for c in range(draw(st.integers(1, 9))):
        kind = draw(st.sampled_from(KINDS))
        call = draw(st.integers(0, 10))
        ret = None if draw(st.integers(0, 3)) == 0 else call + draw(st.integers(0, 5))
        output: object = None
        if kind == "get":
            output = draw(st.sampled_from([None, 1, 2]))
        elif kind == "cas" and ret is not None:
            output = draw(st.booleans())
        ops.append(
            Op(
                client=c,
                kind=kind,
                key=draw(st.sampled_from(["a", "a", "b"])),
                value=draw(st.sampled_from([None, 1, 2, 3])),
                expected=draw(st.sampled_from([None, 1, 2])),
                call=call,
                ret=ret,
                output=output,
                ok=draw(st.integers(0, 9)) > 0,
            )
        )
    return ops


@settings(max_examples=600, deadline=None)
@given(small_random_histories())
def test_agrees_with_the_definition_on_small_histories(history: list[Op]) -> None:
    expected = reference_linearizable(history)
    result = check_kv_history(history)
    assert result.ok == expected, result.explain()
    assert not result.timed_out


# --- performance --------------------------------------------------------------------------------


def simulated_history(
    seed: int, *, n_ops: int, n_keys: int, n_clients: int, crash_rate: float = 0.02
) -> list[Op]:
    """Clients issue ops back to back; each takes effect at a random instant of its interval."""
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(n_keys)]
    planned = []  # (point, client, kind, key, value, call, ret, fate)
    clock = [0.0] * n_clients
    for _ in range(n_ops):
        c = rng.randrange(n_clients)
        call = clock[c] + rng.uniform(0, 2)
        ret = call + rng.uniform(0.5, 10)
        clock[c] = ret
        kind = rng.choices(KINDS, weights=[3, 5, 2, 1])[0]
        fate = rng.random()
        fate_s = "crash" if fate < crash_rate else "fail" if fate < 2 * crash_rate else "done"
        planned.append(
            (
                rng.uniform(call, ret),
                c,
                kind,
                rng.choice(keys),
                rng.randrange(20),
                call,
                ret,
                fate_s,
            )
        )
    store: dict[str, int] = {}
    ops = []
    for _point, c, kind, key, value, call, ret, fate in sorted(planned):
        current = store.get(key)
        expected = current if rng.random() < 0.7 else rng.randrange(20)
        applies = fate == "done" or (fate == "crash" and rng.random() < 0.5)
        output: object = None
        if kind == "get":
            output = current
        elif kind == "cas":
            output = current == expected
            applies = applies and output
        if applies and kind in ("put", "cas"):
            store[key] = value
        elif applies and kind == "del":
            store.pop(key, None)
        ops.append(
            Op(
                client=c,
                kind=kind,
                key=key,
                value=value,
                expected=expected if kind == "cas" else None,
                call=call,
                ret=None if fate == "crash" else ret,
                output=None if fate == "crash" and kind != "get" else output,
                ok=fate != "fail",
            )
        )
    return ops


@pytest.mark.parametrize("n_keys", [10, 1])
def test_two_thousand_ops_from_five_clients(n_keys: int) -> None:
    history = simulated_history(7, n_ops=2000, n_keys=n_keys, n_clients=5)
    start = time.perf_counter()
    result = check_kv_history(history)
    elapsed = time.perf_counter() - start
    print(f"bench: 2000 ops, {n_keys} keys, 5 clients: linearizable in {elapsed:.3f}s")
    assert result.ok, result.explain()

    reads = [i for i, op in enumerate(history) if op.kind == "get" and op.ret is not None]
    i = reads[len(reads) // 2]
    history[i] = dataclasses.replace(history[i], output=NEVER_WRITTEN)
    start = time.perf_counter()
    result = check_kv_history(history)
    elapsed = time.perf_counter() - start
    print(f"bench: same history with one corrupted read: violation found in {elapsed:.3f}s")
    assert_violation(result, history[i].key)
