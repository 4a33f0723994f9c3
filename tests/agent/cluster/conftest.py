"""Fixtures of the multi-process cluster tests (see tests/support/harness.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Cluster, active_clusters


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """A failed test's report ends with the tail of the log of every agent it ran."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        used: list[Cluster] = []
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Cluster):
                used.append(value)
            used += getattr(value, "made", [])
        for cluster in used or active_clusters():
            report.sections.append(
                (f"agent logs: {cluster.name} on 127.0.{cluster.x}.0/24", cluster.logs_tail())
            )


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(**kw)`` -> a Cluster; every process is killed by PID at teardown."""
    made: list[Cluster] = []

    def make(**kwargs: Any) -> Cluster:
        cluster = Cluster(tmp_path, **kwargs)
        made.append(cluster)
        return cluster

    make.made = made  # type: ignore[attr-defined]  # for the log report of a failed test
    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()
