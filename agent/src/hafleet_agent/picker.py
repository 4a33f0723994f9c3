"""Client-side balancing: pick a member to send a request to, in pure Python.

For clients that balance on their own from ``GET /v1/members`` instead of going through
HAProxy. The same strategies as the balancer (docs/balancer.md):

=============  ===================================  =========================================
strategy       picker                               HAProxy counterpart
=============  ===================================  =========================================
``random``     :class:`RandomPicker`                ``balance random`` (one draw)
``roundrobin`` :class:`RoundRobinPicker`            ``balance roundrobin``, equal weights
``weighted``   :class:`SmoothWeightedPicker`        ``balance roundrobin`` with the weights
``leastconn``  :class:`LeastLoadedPicker`           ``balance random(2)`` / ``leastconn``
=============  ===================================  =========================================

- :class:`SmoothWeightedPicker` is nginx's smooth weighted round-robin: every pick adds each
  candidate's weight to its running score, takes the highest score (the first one listed on
  a tie) and subtracts the total weight from it. Over any window of ``sum(weights)`` picks
  each candidate gets exactly its weight, and the picks are spread out: weights 5, 1, 1
  give ``a a b a c a a``, not ``a a a a a b c``.
- :class:`LeastLoadedPicker` is the power of two random choices: draw two distinct
  candidates, take the one with fewer requests in flight per unit of weight. Nearly as good
  as asking everyone, at the cost of two looks; and unlike "always the least loaded", many
  clients with stale counts do not all stampede onto the same member.

Pickers are not thread-safe; one per event loop or lock it. ``pick()`` raises
:class:`NoCandidate` when nobody can take traffic (every weight 0, or no member).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

STRATEGIES = ("random", "roundrobin", "weighted", "leastconn")


class NoCandidate(LookupError):
    """No member can take a request."""


class Picker(Protocol):
    def pick(self) -> str: ...

    def update(self, weights: Mapping[str, int]) -> None: ...


def _check_weights(weights: Mapping[str, int]) -> dict[str, int]:
    out = {}
    for key, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(f"weight of {key!r} must be an integer >= 0, got {w!r}")
        out[str(key)] = w
    return out


class RandomPicker:
    """Uniformly at random among the members whose weight is above 0."""

    def __init__(
        self, weights: Mapping[str, int] | Iterable[str], rng: random.Random | None = None
    ):
        self.rng = rng or random.Random()
        self.update(weights)

    def update(self, weights: Mapping[str, int] | Iterable[str]) -> None:
        if not isinstance(weights, Mapping):
            weights = dict.fromkeys(weights, 1)
        self._ids = [k for k, w in _check_weights(weights).items() if w > 0]

    def pick(self) -> str:
        if not self._ids:
            raise NoCandidate("no member to pick")
        return self.rng.choice(self._ids)


class RoundRobinPicker:
    """Each member with a weight above 0 in turn, in the order given, whatever the weight."""

    def __init__(self, weights: Mapping[str, int] | Iterable[str]):
        self._ids: list[str] = []
        self._next = 0
        self.update(weights)

    def update(self, weights: Mapping[str, int] | Iterable[str]) -> None:
        if not isinstance(weights, Mapping):
            weights = dict.fromkeys(weights, 1)
        ids = [k for k, w in _check_weights(weights).items() if w > 0]
        # Keep the rotation where it was: continue after the member picked last.
        last = self._ids[(self._next - 1) % len(self._ids)] if self._ids else None
        self._ids = ids
        self._next = (ids.index(last) + 1) % len(ids) if last in ids else 0

    def pick(self) -> str:
        if not self._ids:
            raise NoCandidate("no member to pick")
        chosen = self._ids[self._next % len(self._ids)]
        self._next = (self._next + 1) % len(self._ids)
        return chosen


class SmoothWeightedPicker:
    """nginx's smooth weighted round-robin (``ngx_http_upstream_get_peer``)."""

    def __init__(self, weights: Mapping[str, int]):
        self._weights: dict[str, int] = {}
        self._current: dict[str, int] = {}
        self.update(weights)

    def update(self, weights: Mapping[str, int]) -> None:
        """New weights; members that stay keep their running score, so a weight change does
        not restart the cycle (and a member does not get a burst)."""
        self._weights = {k: w for k, w in _check_weights(weights).items() if w > 0}
        self._current = {k: self._current.get(k, 0) for k in self._weights}

    @property
    def weights(self) -> dict[str, int]:
        return dict(self._weights)

    def pick(self) -> str:
        if not self._weights:
            raise NoCandidate("no member with a weight above 0")
        total = 0
        best: str | None = None
        for key, w in self._weights.items():
            self._current[key] += w
            total += w
            if best is None or self._current[key] > self._current[best]:
                best = key
        assert best is not None
        self._current[best] -= total
        return best


class LeastLoadedPicker:
    """Power of two random choices on requests in flight per unit of weight.

    Use :meth:`request` around each request (or :meth:`acquire` / :meth:`release`), so the
    picker knows what is in flight::

        with picker.request() as member:
            send(member)
    """

    def __init__(
        self, weights: Mapping[str, int] | Iterable[str], rng: random.Random | None = None
    ):
        self.rng = rng or random.Random()
        self.in_flight: dict[str, int] = {}
        self._weights: dict[str, int] = {}
        self.update(weights)

    def update(self, weights: Mapping[str, int] | Iterable[str]) -> None:
        if not isinstance(weights, Mapping):
            weights = dict.fromkeys(weights, 1)
        self._weights = {k: w for k, w in _check_weights(weights).items() if w > 0}
        # Requests in flight to a member that left still finish and are released.
        for k in self._weights:
            self.in_flight.setdefault(k, 0)

    def load(self, key: str) -> float:
        return self.in_flight.get(key, 0) / self._weights[key]

    def pick(self) -> str:
        ids = list(self._weights)
        if not ids:
            raise NoCandidate("no member to pick")
        if len(ids) == 1:
            return ids[0]
        a, b = self.rng.sample(ids, 2)
        la, lb = self.load(a), self.load(b)
        if la == lb:
            return a  # a and b are a random pair in random order: a fair coin
        return a if la < lb else b

    def acquire(self) -> str:
        key = self.pick()
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        return key

    def release(self, key: str) -> None:
        n = self.in_flight.get(key, 0)
        if n <= 0:
            raise ValueError(f"release of {key!r} without a request in flight")
        if n == 1 and key not in self._weights:
            del self.in_flight[key]
        else:
            self.in_flight[key] = n - 1

    @contextmanager
    def request(self) -> Iterator[str]:
        key = self.acquire()
        try:
            yield key
        finally:
            self.release(key)


def make_picker(
    strategy: str, weights: Mapping[str, int], rng: random.Random | None = None
) -> RandomPicker | RoundRobinPicker | SmoothWeightedPicker | LeastLoadedPicker:
    """The picker of a strategy. ``weights`` is used as is by ``weighted`` and
    ``leastconn`` (per unit of weight); the others only skip members whose weight is 0."""
    if strategy == "random":
        return RandomPicker(weights, rng)
    if strategy == "roundrobin":
        return RoundRobinPicker(weights)
    if strategy == "weighted":
        return SmoothWeightedPicker(weights)
    if strategy == "leastconn":
        return LeastLoadedPicker(weights, rng)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def weights_from_members(members: Sequence[Mapping[str, Any]], strategy: str) -> dict[str, int]:
    """The candidates of a ``GET /v1/members`` answer: members with a service address that
    are not draining. ``weighted`` uses each one's committed weight (a member without one
    yet gets the median of the others, as the planner does for newcomers); the other
    strategies give everyone the same weight."""
    candidates = [
        m for m in members if m.get("service_addr") and not m.get("draining") and m.get("id")
    ]
    if strategy != "weighted":
        return {str(m["id"]): 1 for m in candidates}
    known = sorted(int(m["weight"]) for m in candidates if isinstance(m.get("weight"), int))
    fallback = known[(len(known) - 1) // 2] if known else 1
    out = {}
    for m in candidates:
        w = m.get("weight")
        out[str(m["id"])] = int(w) if isinstance(w, int) and not isinstance(w, bool) else fallback
    return out
