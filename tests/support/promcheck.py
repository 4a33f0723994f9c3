"""Prometheus's own checks for the tests of issue 20: ``promtool`` (required: Debian's
``prometheus`` package, installed by ``make system-deps``; a test fails without it, it does
not skip), ``promtool check metrics`` on a scrape, and a scrape's samples by name."""

from __future__ import annotations

import shutil
import subprocess


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: install Debian's 'prometheus' package (make system-deps)"
    return path


def check_metrics(text: bytes) -> None:
    """``promtool check metrics`` passes on ``text`` and has nothing to say."""
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert not (done.stdout + done.stderr).strip(), (done.stdout + done.stderr).decode()


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
