"""Spare capacity -> HAProxy weights, with smoothing, hysteresis and the awkward cases.

The leader calls :meth:`WeightPlanner.plan` whenever metrics arrive (or on a timer) with
what it knows of every member; the :class:`Decision` says which table it wants and whether
to commit it now (``weights_set``). Everything here is pure: time comes in as ``now``.
docs/weights.md explains the formula, the choices and the defaults, with a worked example
that ``tests/agent/state/test_weights.py`` checks number for number.

The formula, per member with fresh metrics::

    busy     = clamp(max(cpu_percent / 100, load1 / cpu_count), 0, 1)
    headroom = min_headroom + (1 - min_headroom) * (1 - busy)
    memory   = min(1, (mem_available / mem_total) / mem_reserve)
    score    = cpu_count * headroom * memory
    weight   = clamp(round(256 * smoothed_score / max(smoothed_scores)), 1, 256)

then, in this order of precedence: draining -> 0; a static override -> its weight;
unhealthy -> ``unhealthy_weight``; joined less than ``blackout`` seconds ago -> a
conservative weight (the median of the established members, never above its own), then a
linear ramp to its weight over ``ramp`` seconds; no report for ``stale_after`` seconds ->
the last weight decays towards ``stale_floor`` with half-life ``stale_half_life``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .metrics import HostMetrics, ewma

MAX_WEIGHT = 256
"""HAProxy's largest server weight."""
MIN_WEIGHT = 1
"""The least a member in service gets: 0 is kept for draining."""
MAX_REASON_CHARS = 256
"""The state machine's limit on a ``weights_set`` reason."""

# Modes a member can be in, in order of precedence.
DRAIN = "drain"
OVERRIDE = "override"
UNHEALTHY = "unhealthy"
NEW = "new"
STALE = "stale"
RAMP = "ramp"
SCORED = "scored"


@dataclass(frozen=True, slots=True)
class WeightParams:
    """The knobs; docs/weights.md gives the reasons for the defaults."""

    min_headroom: float = 0.1
    """Share of its idle score a saturated member keeps (damps the feedback loop)."""
    mem_reserve: float = 0.2
    """Available memory (fraction of total) below which the score shrinks linearly to 0."""
    score_alpha: float = 0.5
    """EWMA weight of a member's newest score (1: no smoothing)."""
    deadband: float = 0.10
    """A weight must move by more than this fraction of its committed value ..."""
    deadband_min: int = 2
    """... and by more than this many units, for the move alone to justify a commit."""
    min_commit_interval: float = 5.0
    """Seconds between commits caused by moves alone (structural changes do not wait)."""
    blackout: float = 10.0
    """Seconds after joining during which a member gets a conservative weight."""
    ramp: float = 20.0
    """Seconds after the blackout over which it ramps linearly to its own weight."""
    blackout_weight: int | None = None
    """The conservative weight; None: the median weight of the established members."""
    blackout_fallback: int = 128
    """The conservative weight when no member is established (a cluster being founded)."""
    stale_after: float = 10.0
    """Seconds without a report after which a member's metrics are stale."""
    stale_half_life: float = 30.0
    """Half-life of the decay of a stale member's weight towards ``stale_floor``."""
    stale_floor: int = 1
    """Where a stale member's weight decays to."""
    unhealthy_weight: int = 1
    """The weight of a member marked unhealthy."""

    def validate(self) -> None:
        if not 0.0 <= self.min_headroom <= 1.0:
            raise ValueError("min_headroom must be in [0, 1]")
        if not 0.0 <= self.mem_reserve <= 1.0:
            raise ValueError("mem_reserve must be in [0, 1]")
        if not 0.0 < self.score_alpha <= 1.0:
            raise ValueError("score_alpha must be in (0, 1]")
        if self.deadband < 0 or self.deadband_min < 0:
            raise ValueError("deadband and deadband_min must be >= 0")
        for name in ("min_commit_interval", "blackout", "ramp", "stale_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.stale_half_life <= 0:
            raise ValueError("stale_half_life must be > 0")
        for name in ("blackout_weight", "blackout_fallback", "stale_floor", "unhealthy_weight"):
            value = getattr(self, name)
            if value is not None and not MIN_WEIGHT <= value <= MAX_WEIGHT:
                raise ValueError(f"{name} must be in {MIN_WEIGHT}..{MAX_WEIGHT}")


DEFAULT_PARAMS = WeightParams()


@dataclass(frozen=True, slots=True)
class MemberInput:
    """What the leader knows of one member. ``last_report_time`` is on the leader's clock
    (when the report arrived), as are ``joined_at`` and ``listening_since``; ``override`` is a
    fixed weight 1..256.

    ``listening_since`` is when this leader began to hear reports (it took over): a member it
    has no report from yet is silent since then, not since ``joined_at``. Without it a new
    leader that planned before its own first sample (or a member's first report) took that
    member as silent since it joined, long ago, and gave it the stale floor (1)."""

    metrics: HostMetrics | None = None
    last_report_time: float | None = None
    joined_at: float = 0.0
    healthy: bool = True
    draining: bool = False
    override: int | None = None
    listening_since: float = 0.0

    def __post_init__(self) -> None:
        if self.override is not None and not MIN_WEIGHT <= self.override <= MAX_WEIGHT:
            raise ValueError(f"an override must be in {MIN_WEIGHT}..{MAX_WEIGHT} (drain for 0)")


@dataclass(frozen=True, slots=True)
class Decision:
    """The table the planner wants, whether to commit it now, and why. ``modes`` says how
    each member's weight was chosen (``drain``, ``override``, ``unhealthy``, ``new``,
    ``stale``, ``ramp``, ``scored``)."""

    table: dict[str, int]
    commit: bool
    reason: str
    modes: dict[str, str] = field(default_factory=dict)


# ---- pure functions ------------------------------------------------------------------------


def busy_fraction(metrics: HostMetrics) -> float:
    """How busy the host is, 0..1: CPU use or run queue per core, whichever is worse."""
    cores = max(1, metrics.cpu_count)
    busy = max(metrics.cpu_percent / 100.0, metrics.load1 / cores)
    return min(1.0, max(0.0, busy))


def memory_factor(available: int, total: int, reserve: float) -> float:
    """1 while at least ``reserve`` of the memory is available, then linearly down to 0."""
    if total <= 0 or reserve <= 0:
        return 1.0
    return min(1.0, max(0.0, available / total) / reserve)


def capacity_score(metrics: HostMetrics, params: WeightParams = DEFAULT_PARAMS) -> float:
    """The member's spare capacity in cores: ``cpu_count * headroom * memory``."""
    headroom = params.min_headroom + (1.0 - params.min_headroom) * (1.0 - busy_fraction(metrics))
    memory = memory_factor(metrics.mem_available, metrics.mem_total, params.mem_reserve)
    return max(1, metrics.cpu_count) * headroom * memory


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def clamp_weight(x: float) -> int:
    return min(MAX_WEIGHT, max(MIN_WEIGHT, round_half_up(x)))


def scale_weight(score: float, reference: float) -> int:
    """``score`` as a weight where ``reference`` (the best score) gets 256; floor 1."""
    if reference <= 0:
        return MAX_WEIGHT  # every score is 0: all alike
    return clamp_weight(MAX_WEIGHT * score / reference)


def scale_weights(scores: Mapping[str, float]) -> dict[str, int]:
    """Normalise scores so the best gets 256 and the others proportionally less (>= 1)."""
    if not scores:
        return {}
    reference = max(scores.values())
    return {mid: scale_weight(s, reference) for mid, s in sorted(scores.items())}


def moved(old: int, new: int, params: WeightParams = DEFAULT_PARAMS) -> bool:
    """Whether a weight moved past the dead band."""
    return abs(new - old) > max(params.deadband * old, params.deadband_min)


# ---- the planner ---------------------------------------------------------------------------


class WeightPlanner:
    """The leader's memory between plans: smoothed scores, what it last committed and when.

    A new leader starts a new planner; passing the committed table (``current``) to
    :meth:`plan` lets it pick up where the last leader left off."""

    def __init__(self, params: WeightParams = DEFAULT_PARAMS) -> None:
        params.validate()
        self.params = params
        self._score: dict[str, float] = {}
        self._seen: dict[str, float] = {}
        self._stale_base: dict[str, int] = {}
        self._output: dict[str, int] = {}
        self._committed: dict[str, int] | None = None
        self._committed_at: float | None = None
        self._pins: dict[str, str | None] = {}

    def smoothed_score(self, member_id: str) -> float | None:
        return self._score.get(member_id)

    def plan(
        self,
        now: float,
        members: Mapping[str, MemberInput],
        current: Mapping[str, int] | None = None,
    ) -> Decision:
        """The table for ``members`` at ``now``; ``current`` is the committed table (the
        state's ``weights()["weights"]``), by default the one this planner last chose."""
        p = self.params
        known = set(self._score) | set(self._stale_base) | set(self._output) | set(self._pins)
        for mid in known - set(members):
            self._forget(mid)
        fresh = self._update_scores(now, members)
        modes = {mid: self._mode(now, mid, inp, fresh) for mid, inp in sorted(members.items())}

        scored = {
            mid: fresh[mid]
            for mid, mode in modes.items()
            if mode in (NEW, RAMP, SCORED) and mid in fresh
        }
        reference = max(scored.values(), default=0.0)
        target = {mid: scale_weight(s, reference) for mid, s in scored.items()}
        established = sorted(target[mid] for mid, mode in modes.items() if mode == SCORED)
        if p.blackout_weight is not None:
            conservative = p.blackout_weight
        elif established:
            conservative = established[(len(established) - 1) // 2]
        else:
            conservative = p.blackout_fallback

        baseline = dict(current) if current is not None else self._committed
        table: dict[str, int] = {}
        for mid, mode in modes.items():
            inp = members[mid]
            if mode == DRAIN:
                w = 0
            elif mode == OVERRIDE:
                assert inp.override is not None
                w = inp.override
            elif mode == UNHEALTHY:
                w = p.unhealthy_weight
            elif mode == NEW:
                w = min(conservative, target.get(mid, conservative))
            elif mode == RAMP:
                start = min(conservative, target[mid])
                frac = (now - inp.joined_at - p.blackout) / p.ramp if p.ramp > 0 else 1.0
                w = clamp_weight(start + (target[mid] - start) * min(1.0, max(0.0, frac)))
            elif mode == STALE:
                w = self._stale_weight(now, mid, inp, baseline, conservative)
            else:
                w = target[mid]
            if mode != STALE:
                self._stale_base.pop(mid, None)
            table[mid] = w
        self._output = dict(table)
        pins = {mid: _pin(mode, members[mid]) for mid, mode in modes.items()}
        return self._decide(now, table, modes, pins, baseline)

    # ---- internals -----------------------------------------------------------------------
    def _forget(self, mid: str) -> None:
        for d in (self._score, self._seen, self._stale_base, self._output, self._pins):
            d.pop(mid, None)

    def _update_scores(self, now: float, members: Mapping[str, MemberInput]) -> dict[str, float]:
        """Fold each new report into its member's EWMA; the scores of fresh members."""
        p = self.params
        fresh: dict[str, float] = {}
        for mid, inp in sorted(members.items()):
            t = inp.last_report_time
            if inp.metrics is None or t is None or now - t > p.stale_after:
                continue
            seen = self._seen.get(mid)
            if seen is None or t > seen:
                score = capacity_score(inp.metrics, p)
                self._score[mid] = ewma(self._score.get(mid), score, p.score_alpha)
                self._seen[mid] = t
            fresh[mid] = self._score[mid]
        return fresh

    def _mode(self, now: float, mid: str, inp: MemberInput, fresh: Mapping[str, float]) -> str:
        p = self.params
        age = now - inp.joined_at
        if inp.draining:
            return DRAIN
        if inp.override is not None:
            return OVERRIDE
        if not inp.healthy:
            return UNHEALTHY
        if age < p.blackout:
            return NEW
        if mid not in fresh:
            return STALE
        if age < p.blackout + p.ramp:
            return RAMP
        return SCORED

    def _stale_weight(
        self,
        now: float,
        mid: str,
        inp: MemberInput,
        baseline: Mapping[str, int] | None,
        conservative: int,
    ) -> int:
        p = self.params
        base = self._stale_base.get(mid)
        if base is None:
            if mid in self._output:
                base = self._output[mid]
            elif baseline is not None and mid in baseline:
                base = baseline[mid]
            else:
                base = conservative
            base = max(MIN_WEIGHT, base)
            self._stale_base[mid] = base
        last = (
            inp.last_report_time
            if inp.last_report_time is not None
            else max(inp.joined_at, inp.listening_since)
        )
        elapsed = max(0.0, now - (last + p.stale_after))
        decay = 0.5 ** (elapsed / p.stale_half_life)
        return clamp_weight(p.stale_floor + (base - p.stale_floor) * decay)

    def _decide(
        self,
        now: float,
        table: dict[str, int],
        modes: dict[str, str],
        pins: dict[str, str | None],
        baseline: Mapping[str, int] | None,
    ) -> Decision:
        p = self.params

        def decision(commit: bool, reason: str) -> Decision:
            if commit:
                self._committed = dict(table)
                self._committed_at = now
                self._pins = dict(pins)
            return Decision(table, commit, _truncate(reason), modes)

        if baseline is None:
            return decision(True, "initial table")
        if table == baseline:
            self._pins = dict(pins)
            return decision(False, "unchanged")
        structural, pinned = _structural_changes(table, baseline, pins, self._pins)
        moves = [
            f"{mid} {baseline[mid]}->{table[mid]}"
            for mid in sorted(table)
            if mid in baseline and mid not in pinned and moved(baseline[mid], table[mid], p)
        ]
        since = None if self._committed_at is None else now - self._committed_at
        recent = since is not None and since < p.min_commit_interval
        if structural:
            if recent and table == self._committed:
                return decision(False, "awaiting the commit of: " + "; ".join(structural))
            return decision(True, "; ".join(structural + ([", ".join(moves)] if moves else [])))
        if not moves:
            return decision(False, "within the dead band")
        if recent:
            wait = p.min_commit_interval - (since or 0.0)
            return decision(False, f"rate limited for {wait:.1f}s: " + ", ".join(moves))
        return decision(True, "moved: " + ", ".join(moves))


def _pin(mode: str, inp: MemberInput) -> str | None:
    """The part of a member's mode that, when it changes, is worth a commit at once."""
    if mode == OVERRIDE:
        return f"override {inp.override}"
    if mode in (DRAIN, UNHEALTHY):
        return mode
    return None


def _structural_changes(
    table: Mapping[str, int],
    baseline: Mapping[str, int],
    pins: Mapping[str, str | None],
    last_pins: Mapping[str, str | None],
) -> tuple[list[str], set[str]]:
    """What changed that is worth a commit at once, and the members it concerns."""
    out = []
    pinned: set[str] = set()
    added = sorted(set(table) - set(baseline))
    removed = sorted(set(baseline) - set(table))
    if added:
        out.append("joined: " + ", ".join(added))
    if removed:
        out.append("left: " + ", ".join(removed))
    for mid in sorted(set(table) & set(baseline)):
        was = last_pins.get(mid)
        now = pins[mid]
        if mid in last_pins and was != now:
            out.append(f"{mid}: {was or 'normal'} -> {now or 'normal'}")
            pinned.add(mid)
        elif (table[mid] == 0) != (baseline[mid] == 0):
            out.append(f"{mid}: {'drain' if table[mid] == 0 else 'back from drain'}")
            pinned.add(mid)
    return out, pinned


def _truncate(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 3] + "..."
