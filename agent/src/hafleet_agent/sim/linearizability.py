"""Linearizability checker for histories recorded against the replicated key-value store.

The approach is porcupine's (github.com/anishathalye/porcupine):

* **P-compositionality.** Every operation touches exactly one key and a key-value store is a
  product of independent registers, so a history is linearizable iff each per-key sub-history
  is. Each key is checked on its own; the search space is exponential in the concurrency *per
  key*, not in the whole history.
* **Wing & Gong search with Lowe's memoisation.** A key's call and return events are sorted by
  time into a doubly linked list. The search walks the list from its head: any operation whose
  call comes before the first return event still in the list may be linearized next, if the
  model accepts it; it is then lifted out of the list (call and return) and pushed on an
  explicit stack. Reaching a return event means that operation had to take effect by then and
  none of the candidates could: backtrack. A cache of ``(bitset of linearized ops, model
  state)`` pairs prunes every configuration reached before, which is what makes the search
  practical. Crashed ops get extra care (subsumption in the cache, symmetry and useless-step
  reductions, see ``_check_partition``) because each one stays a candidate forever.
* **Budget.** ``max_steps`` bounds the search steps (one step: one candidate looked at, or one
  backtrack) over the whole check. Running out gives ``ok=False, timed_out=True``: unknown.

Semantics choices (all chosen so that the checker never reports a false violation):

* **Real-time order.** ``A`` precedes ``B`` only if ``A.ret < B.call`` strictly. When a return
  and a call carry the same timestamp the two ops are treated as concurrent (call events sort
  before return events at equal times): clocks have finite resolution, so equal times prove
  nothing about order.
* **Definitely failed ops** (``ok=False``) never took effect and are dropped.
* **Indeterminate ops** (``ret=None``: timeout, crash) are concurrent with everything after their
  call (``ret = +inf``). A get is dropped (it constrains nothing). A put/del/cas may or may not
  have taken effect and its output is unknown: the search may linearize it anywhere after its
  call, where a cas applies iff its precondition holds at that point, or never (a key is
  linearizable once all its *completed* ops are linearized; "never" is equivalent to "last",
  where nobody can observe it).
* **Values** are JSON-ish and compared after freezing into a canonical hashable form: dicts
  compare regardless of insertion order, lists and tuples are the same thing (a JSON array),
  ``True`` differs from ``1``. ``None`` means "absent": a get of a missing key outputs ``None``,
  a cas with ``expected=None`` requires the key to be absent, and putting ``None`` is a delete.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["CheckResult", "Op", "check_kv_history", "freeze"]

KINDS = ("put", "get", "cas", "del")
_UNSEEN = object()  # the state after writing a value that no get reads and no cas expects
_PUT, _GET, _CAS, _DEL = range(4)
_KIND_CODE = {kind: code for code, kind in enumerate(KINDS)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One client operation as recorded by the simulator or a chaos test.

    Keyword-only: the fields keep the documented order although ``call``/``ret`` have no
    defaults and follow fields that do.
    """

    client: int  # client id
    kind: str  # "put" | "get" | "cas" | "del"
    key: str
    value: object = None  # put: new value; cas: new value
    expected: object = None  # cas: expected current value (None = key must be absent)
    call: float  # invocation time (any monotonic number)
    ret: float | None  # response time; None = indeterminate (may or may not have taken effect)
    output: object = None  # get: value read (None = absent); cas: True/False; put/del: ignored
    ok: bool = True  # False = definitely failed (never took effect): dropped from the history


@dataclass
class CheckResult:
    ok: bool
    key: str | None = None  # first key whose partition is not linearizable (or timed out)
    # For diagnosis: the longest linearization found for that key, measured in completed ops
    # (the first one found: crashed ops appear in it only where something needed them) ...
    longest_prefix: list[Op] | None = None
    # ... and the ops that could go next there; none of the completed ones fits.
    unexplained: list[Op] | None = None
    timed_out: bool = False  # the search hit its budget: result unknown (ok=False)

    def explain(self) -> str:
        """A human readable, multi-line account of the result."""
        if self.ok:
            return "history is linearizable"
        prefix = self.longest_prefix or []
        if self.timed_out:
            lines = [
                f"key {self.key!r}: search budget (max_steps) exhausted: linearizability UNKNOWN",
                f"longest linearization found so far ({len(prefix)} ops):",
            ]
        else:
            lines = [
                f"key {self.key!r}: NOT linearizable",
                f"longest linearization found ({len(prefix)} ops):",
            ]
        state: object = None
        width = len(str(len(prefix)))
        for n, op in enumerate(prefix, 1):
            state = _apply_raw(state, op)
            lines.append(f"  {n:>{width}}. {_describe(op)}")
        if not prefix:
            lines.append("  (none: not even the first op fits)")
        lines.append(f"state after it: {self.key!r} = {_show(state)}")
        pending = self.unexplained or []
        if pending:
            if self.timed_out:
                lines.append("ops that could go next there:")
            else:
                lines.append("none of these ops can take effect next:")
            for op in pending:
                lines.append(
                    f"  {_describe(op)}  <- {_why_not(state, op, timed_out=self.timed_out)}"
                )
        return "\n".join(lines)


def freeze(value: object) -> Hashable:
    """A canonical hashable form of a JSON-ish value; equal values freeze equal."""
    if isinstance(value, bool):
        return ("bool", value)  # JSON true is not 1
    if value is None or isinstance(value, str | int | float | bytes):
        return value
    if isinstance(value, Mapping):
        items = sorted(((freeze(k), freeze(v)) for k, v in value.items()), key=repr)
        return ("dict", tuple(items))
    if isinstance(value, list | tuple):
        return ("list", tuple(freeze(v) for v in value))
    if isinstance(value, set | frozenset):
        return ("set", frozenset(freeze(v) for v in value))
    try:
        hash(value)
    except TypeError:
        return ("repr", repr(value))
    return value  # type: ignore[return-value]


def check_kv_history(ops: Iterable[Op], *, max_steps: int = 5_000_000) -> CheckResult:
    """Check a put/get/cas/del history for linearizability, one key at a time.

    ``max_steps`` bounds the search steps over the whole check; when it is exceeded the result
    is ``ok=False, timed_out=True`` for the key being searched. Keys are checked in sorted
    order and the first key that is not linearizable is reported. Raises ``ValueError`` on a
    malformed op (unknown kind, ``ret < call``, a completed cas whose output is not a bool).
    """
    partitions: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if not op.ok:
            continue  # definitely failed: never took effect
        _validate(op)
        if op.kind == "get" and op.ret is None:
            continue  # an indeterminate read constrains nothing
        partitions[op.key].append(op)
    budget = [max_steps]
    for key in sorted(partitions, key=str):
        result = _check_partition(key, partitions[key], budget)
        if not result.ok:
            return result
    return CheckResult(ok=True)


def _validate(op: Op) -> None:
    if op.kind not in _KIND_CODE:
        raise ValueError(f"unknown op kind {op.kind!r} in {op}")
    if op.ret is not None and op.ret < op.call:
        raise ValueError(f"op returns before it is called: {op}")
    if op.kind == "cas" and op.ret is not None and not isinstance(op.output, bool):
        raise ValueError(f"completed cas needs a bool output (True = swapped): {op}")


def _check_partition(key: str, ops: list[Op], budget: list[int]) -> CheckResult:
    """Wing & Gong / Lowe search over one key's history; ``budget[0]`` is the steps left.

    A configuration is (completed ops linearized, crashed ops linearized, state). Completed ops
    live in a doubly linked list of call/return events; the search walks it from the head and
    tries every call before the first return, and backtracks on reaching a return. Crashed ops
    (``ret`` = +inf) never bound the search: they live in a second list, in call order, and are
    tried after the completed candidates (those called by the first return).

    Crashed ops are optional, so a configuration is dominated by one with the same completed
    ops and state and a subset of its crashed ops. The search skips a step when

    * a configuration dominating the result was reached before (Lowe's cache, with subsumption
      on the crashed ops);
    * it would linearize a crashed op that changes nothing;
    * it would extend a run of crashed ops (the top of the stack) with an op that has the same
      outcome from a state earlier in that run: the run (or its tail) is useless there, and the
      configuration without it is explored from the run's start anyway;
    * it would linearize a crashed op while an earlier called one with the same effect is still
      pending: the two are interchangeable, so only the earliest is tried;
    * (by construction) values that no get reads and no cas expects are all the same value
      (_UNSEEN) to the model, so writing any of them leads to one state.

    Each rule only drops a step whose outcome some other explored step covers, so the search
    stays exact; together they keep histories with many crashed writes tractable.
    """
    n = len(ops)
    # Precomputed per op: kind code, value written, expected, output (frozen), completed.
    # A value nobody reads or expects is indistinguishable from any other such value: they all
    # become _UNSEEN, so that writes of them lead to the same state.
    kinds = [_KIND_CODE[op.kind] for op in ops]
    expects = [freeze(op.expected) for op in ops]
    outputs = [freeze(op.output) if op.kind == "get" else op.output for op in ops]
    seen_values = {outputs[i] for i in range(n) if kinds[i] == _GET}
    seen_values.update(expects[i] for i in range(n) if kinds[i] == _CAS)

    def canonical(value: object) -> Hashable:
        frozen = freeze(value)
        return frozen if frozen in seen_values else _UNSEEN

    values = [canonical(op.value) for op in ops]
    absent = canonical(None)
    completed = [op.ret is not None for op in ops]

    def step(i: int, state: Hashable) -> tuple[bool, Hashable]:
        """The model, one register: may op i go next from ``state``, and what state follows?"""
        kind = kinds[i]
        if kind == _GET:
            return outputs[i] == state, state
        if kind == _PUT:
            return True, values[i]
        if kind == _DEL:
            return True, absent
        if not completed[i]:  # cas with unknown outcome: swaps iff it can
            return True, values[i] if state == expects[i] else state
        if outputs[i]:
            return state == expects[i], values[i]
        return state != expects[i], state

    # Completed ops: op i has call event 2i and return event 2i+1; then head and tail sentinels.
    events = _sorted_events([i for i in range(n) if completed[i]], ops)
    head, tail = 2 * n, 2 * n + 1
    nxt, prv = _linked([head, *events, tail], 2 * n + 2)
    is_call = [e % 2 == 0 for e in range(2 * n)] + [False, False]  # the tail stops a walk
    # Crashed ops: positions 0..m-1 in call order; then head and tail sentinels.
    crashed = sorted((i for i in range(n) if not completed[i]), key=lambda i: (ops[i].call, i))
    m = len(crashed)
    chead, ctail = m, m + 1
    cnxt, cprv = _linked([chead, *range(m), ctail], m + 2)
    ccall = [ops[i].call for i in crashed]
    cpos = {i: p for p, i in enumerate(crashed)}
    # Crashed ops with the same effect are interchangeable: only the earliest called one not
    # yet linearized is tried (their rank in their class), which keeps the linearized ones a
    # prefix of each class.
    classes: dict[tuple[int, Hashable, Hashable], int] = {}
    klass: dict[int, int] = {}
    rank: dict[int, int] = {}
    members: list[int] = []
    for i in crashed:
        kind = kinds[i]
        effect = (kind, None if kind == _DEL else values[i], expects[i] if kind == _CAS else None)
        c = klass[i] = classes.setdefault(effect, len(classes))
        if c == len(members):
            members.append(0)
        rank[i] = members[c]
        members[c] += 1
    used = [0] * len(classes)  # how many of each class are linearized

    total = remaining = len(events) // 2  # completed ops (still) to linearize
    state = absent
    done = 0  # bitset of linearized completed ops
    extra = 0  # bitset of linearized crashed ops
    cache: dict[tuple[int, Hashable], list[int]] = {}  # (done, state) -> minimal `extra`s
    # Frames: (op id, state before it, limit and crashed list position to resume at).
    stack: list[tuple[int, Hashable, float, int]] = []
    best: list[int] = []  # the first linearization reached with the most completed ops
    best_done = best_len = 0  # best_len > 0: stack[:best_len] is a new best, not copied yet
    steps = budget[0]
    entry = nxt[head]  # next event to look at while walking the event list ...
    cursor = -1  # ... or, once >= 0, the next crashed op to try,
    limit = math.inf  # among those called by this time
    while remaining:
        if steps <= 0:
            budget[0] = 0
            if best_len:
                best = [j for j, *_ in stack[:best_len]]
            return _failure(key, ops, best, timed_out=True)
        steps -= 1
        if cursor < 0:
            if not is_call[entry]:
                # The first return: that op must take effect by now. Crashed candidates next.
                ret = None if entry == tail else ops[entry >> 1].ret
                limit = math.inf if ret is None else ret
                cursor = cnxt[chead]
                continue
            i = entry >> 1
            entry = nxt[entry]
        elif cursor != ctail and ccall[cursor] <= limit:
            i = crashed[cursor]
            cursor = cnxt[cursor]
            if rank[i] != used[klass[i]]:
                continue  # an earlier called twin is still there: try that one instead
        else:
            # Nothing (more) fits: backtrack.
            if best_len:
                best, best_len = [j for j, *_ in stack[:best_len]], 0
            if not stack:
                budget[0] = steps
                return _failure(key, ops, best, timed_out=False)
            i, state, limit, cursor = stack.pop()
            if completed[i]:
                done ^= 1 << i
                remaining += 1
                call, ret = 2 * i, 2 * i + 1  # unlift in reverse order: return, then call
                nxt[prv[ret]] = prv[nxt[ret]] = ret
                nxt[prv[call]] = prv[nxt[call]] = call
                entry = nxt[call]
            else:
                extra ^= 1 << i
                used[klass[i]] -= 1
                p = cpos[i]
                cnxt[cprv[p]] = cprv[cnxt[p]] = p
                cursor = cnxt[p]
            continue

        fits, new_state = step(i, state)
        if not fits or (not completed[i] and new_state == state):
            continue
        k = len(stack) - 1
        while k >= 0 and not completed[stack[k][0]]:  # the run of crashed ops on top
            before = stack[k][1]
            if (not completed[i] and new_state == before) or step(i, before) == (True, new_state):
                break  # the run from frame k on is useless before op i
            k -= 1
        else:
            if completed[i]:
                new_done, new_extra = done | 1 << i, extra
            else:
                new_done, new_extra = done, extra | 1 << i
            seen = cache.setdefault((new_done, new_state), [])
            if any(old | new_extra == new_extra for old in seen):
                continue  # reached before with a subset of these crashed ops: it failed
            seen[:] = [old for old in seen if old | new_extra != old]
            seen.append(new_extra)

            stack.append((i, state, limit, -1 if completed[i] else cpos[i]))
            state, done, extra = new_state, new_done, new_extra
            if completed[i]:
                remaining -= 1
                call, ret = 2 * i, 2 * i + 1  # lift its call and return events out of the list
                nxt[prv[call]], prv[nxt[call]] = nxt[call], prv[call]
                nxt[prv[ret]], prv[nxt[ret]] = nxt[ret], prv[ret]
                if total - remaining > best_done:
                    best_done, best_len = total - remaining, len(stack)  # copied on backtrack
            else:
                used[klass[i]] += 1
                p = cpos[i]
                cnxt[cprv[p]], cprv[cnxt[p]] = cnxt[p], cprv[p]
            entry = nxt[head]
            cursor = -1
    budget[0] = steps
    return CheckResult(ok=True)


def _linked(chain: list[int], size: int) -> tuple[list[int], list[int]]:
    """Next/previous arrays (over nodes 0..size-1) of a doubly linked list holding ``chain``."""
    nxt = [-1] * size
    prv = [-1] * size
    for a, b in zip(chain, chain[1:], strict=False):
        nxt[a] = b
        prv[b] = a
    return nxt, prv


def _sorted_events(subset: list[int], ops: list[Op]) -> list[int]:
    """Call (2i) and return (2i+1) events of ``ops[i]`` for i in ``subset``, in time order.

    At equal times calls sort first, so ops touching at a boundary count as concurrent.
    """

    def sort_key(event: int) -> tuple[float, int, int]:
        op = ops[event >> 1]
        if event % 2 == 0:
            return (op.call, 0, event)
        return (math.inf if op.ret is None else op.ret, 1, event)

    return sorted((e for i in subset for e in (2 * i, 2 * i + 1)), key=sort_key)


def _failure(key: str, ops: list[Op], best: list[int], *, timed_out: bool) -> CheckResult:
    """Build the diagnosis: the longest linearization and the ops that could follow it."""
    done = set(best)
    frontier: list[Op] = []
    for event in _sorted_events(list(range(len(ops))), ops):
        i = event >> 1
        if i in done:
            continue
        if event % 2:
            break  # the first pending return: everything after it had to wait for it
        frontier.append(ops[i])
    return CheckResult(
        ok=False,
        key=key,
        longest_prefix=[ops[i] for i in best],
        unexplained=frontier,
        timed_out=timed_out,
    )


def _apply_raw(state: object, op: Op) -> object:
    """Replay ``op`` on a raw (unfrozen) value, as the search did."""
    if op.kind == "put":
        return op.value
    if op.kind == "del":
        return None
    if op.kind == "cas":
        swapped = op.output if op.ret is not None else freeze(state) == freeze(op.expected)
        return op.value if swapped else state
    return state


def _why_not(state: object, op: Op, *, timed_out: bool) -> str:
    current = _show(state)
    if op.kind == "get" and freeze(op.output) != freeze(state):
        return f"reads {_show(op.output)}, but the value is {current}"
    if op.kind == "cas" and op.ret is not None:
        matches = freeze(state) == freeze(op.expected)
        if op.output and not matches:
            return f"swapped, but the value is {current}, not {_show(op.expected)}"
        if not op.output and matches:
            return f"failed, but the value is {current}, as expected"
    if op.ret is None and freeze(_apply_raw(state, op)) == freeze(state):
        return "indeterminate, and would change nothing here"
    if op.ret is None and not timed_out:
        return "indeterminate; taking effect here does not help either"
    return "fits here; the search did not get further"


def _show(value: object) -> str:
    return "<absent>" if value is None else repr(value)


def _time(t: float | None) -> str:
    if t is None:
        return "?"
    try:
        return format(t, "g")
    except (TypeError, ValueError):
        return str(t)


def _describe(op: Op) -> str:
    end = ")" if op.ret is None else "]"
    span = f"[{_time(op.call)}, {_time(op.ret)}{end}"
    if op.kind == "put":
        text = f"put({op.key!r}, {op.value!r})"
    elif op.kind == "del":
        text = f"del({op.key!r})"
    elif op.kind == "get":
        text = f"get({op.key!r}) -> {_show(op.output)}"
    else:
        text = f"cas({op.key!r}, {_show(op.expected)} -> {op.value!r})"
        if op.ret is None:
            text += " -> ?"
        else:
            text += " -> ok" if op.output else " -> failed"
    if op.ret is None and op.kind != "cas":
        text += " (indeterminate)"
    return f"{span:<18} client {op.client}: {text}"
