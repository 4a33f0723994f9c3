"""The warning throttle: one line per source and kind per interval, the count held back."""

from __future__ import annotations

import logging

import pytest

from hafleet_agent.throttle import WarnThrottle
from hafleet_agent.transport import _reason_kind


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_kind_from_one_source_reaches_the_log_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    throttle = WarnThrottle(logging.getLogger("hafleet.test"), 10.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="hafleet.test")
    kinds = ["replayed or reordered frame", "frame failed authentication", "failed to prove"]
    for _ in range(5):
        for kind in kinds:
            throttle.warn("10.0.0.1", "closing: %s", kind, kind=kind)
    assert [r.getMessage() for r in caplog.records] == [f"closing: {k}" for k in kinds]
    assert throttle.held_total == 12
    clock.now += 10.0
    throttle.warn("10.0.0.1", "closing: %s", kinds[0], kind=kinds[0])
    assert caplog.records[-1].getMessage() == (
        "closing: replayed or reordered frame (4 more from 10.0.0.1 in the 10s before were not "
        "logged)"
    )


def test_kinds_are_few_however_the_numbers_change() -> None:
    a = _reason_kind("replayed or reordered frame: counter 87, expected 88")
    b = _reason_kind("replayed or reordered frame: counter 90, expected 91")
    assert a == b == "replayed or reordered frame"
    assert _reason_kind("ConnectionResetError: [Errno 104] reset") == "ConnectionResetError"
    assert len(_reason_kind("x" * 500)) == 80
    # a failed TLS handshake's kind holds its reason: another CA and an expired certificate
    # are two kinds, each logged once per interval
    other_ca = _reason_kind("TLS handshake failed: certificate verify failed: unable to get")
    expired = _reason_kind(
        "TLS handshake failed: certificate verify failed: certificate has expired"
    )
    assert other_ca != expired and expired.endswith("certificate has expired")


def test_sources_and_kinds_together_stay_bounded() -> None:
    throttle = WarnThrottle(logging.getLogger("hafleet.test"), 10.0, max_sources=4, clock=Clock())
    for i in range(100):
        throttle.warn(f"10.0.0.{i}", "m", kind=f"k{i % 3}")
    assert len(throttle._last) <= 5  # four, then one shared entry for the others


def test_the_first_line_of_a_source_is_logged_whatever_the_clock_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 100.1 - (100.1 - 0.3) rounds to 0.29999999999999716: a throttle that took an unseen
    # source as "logged an interval ago" held its first line back at such clock values.
    clock = Clock()
    clock.now = 100.1
    throttle = WarnThrottle(logging.getLogger("hafleet.test"), 0.3, clock=clock)
    caplog.set_level(logging.WARNING, logger="hafleet.test")
    assert throttle.warn("10.0.0.9", "first") is True
    assert [r.getMessage() for r in caplog.records] == ["first"]
