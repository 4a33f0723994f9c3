"""Fixtures of the balancer tests: a ``Lab`` of real agents, HAProxy, demo backends and
syncers on a leased loopback /24; every process is killed by its PID at teardown, and a
failed test's report ends with the tail of every log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from balancer_lab import Lab

_LABS: list[Lab] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for lab in _LABS:
            report.sections.append((f"balancer lab 127.0.{lab.cluster.x}.0/24", lab.logs()))


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[[], Lab]]:
    made: list[Lab] = []

    def make() -> Lab:
        lab = Lab(tmp_path)
        made.append(lab)
        _LABS.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in made:
            try:
                lab.close()
            finally:
                _LABS.remove(lab)
