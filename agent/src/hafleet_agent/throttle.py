"""Log lines that anyone on the network can cause, bounded: one per source (and kind) per
interval.

A flood of bad connections or requests from one address would otherwise write a line each
(20,000 lines in a few seconds). The transport (a connection that fails the handshake) and the
HTTP API (a request aiohttp's parser refuses) log through a :class:`WarnThrottle`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: Distinct sources a throttle remembers at once; past that, the others share one entry.
MAX_SOURCES = 1024


class WarnThrottle:
    """One line per source address per ``interval``; the next one says how many were held.

    Sources are remembered for one interval; past ``max_sources`` of them at once, the
    others share one entry (``"other sources"``), so the memory stays bounded too.
    ``held_total`` counts the lines not logged.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        *,
        max_sources: int = MAX_SOURCES,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_sources = max_sources
        self.level = level
        self.clock = clock
        self.held_total = 0
        self._last: dict[str, tuple[float, int]] = {}  # source -> (logged at, held since)

    def warn(
        self,
        source: str,
        msg: str,
        *args: object,
        kind: str = "",
        fields: dict[str, object] | None = None,
    ) -> bool:
        """Log ``msg % args`` unless ``source`` had a line of the same ``kind`` within the
        interval; True when it was logged. ``kind`` keeps different failures from one source
        apart (a replayed frame, a forged proof), so each still reaches the log once per
        interval; it must come from a small fixed set (the code's own reasons), never from
        the peer's bytes, or the throttle would bound nothing. ``fields``: the line's
        structured fields (the JSON log's, logfmt.py), ``held`` (the lines not logged
        before it) added."""
        now = self.clock()
        key = f"{source} ({kind})" if kind else source
        label = source
        if key not in self._last and len(self._last) >= self.max_sources:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
            if len(self._last) >= self.max_sources:
                key = label = "other sources"
        last = self._last.get(key)
        # A source (and kind) not seen within the interval logs at once. (Defaulting to
        # "logged an interval ago" held back the first line whenever the float subtraction
        # rounded below the interval: it depended on the clock's value.)
        logged_at, held = last if last is not None else (now - self.interval, 0)
        if last is not None and now - logged_at < self.interval:
            self._last[key] = (logged_at, held + 1)
            self.held_total += 1
            return False
        self._last[key] = (now, 0)
        if held:
            msg += " (%d more from %s in the %.0fs before were not logged)"
            args = (*args, held, label, now - logged_at)
        extra = {"fields": {**fields, "held": held}} if fields is not None else None
        self.logger.log(self.level, msg, *args, extra=extra)
        return True
