"""``hafleet-agent`` with its host sensors read from a file: a host's load, per agent.

    python fakeload_agent.py METRICS_FILE run --node-id ...

Every agent of a test cluster runs on the same machine, so psutil would report the same host
to all of them and their capacity weights would always be equal. This launcher runs the real
agent (the same ``hafleet_agent.cli.main``: Raft, reports, the leader's planner, the
committed table) with one thing swapped: ``metrics.ProcSource`` (the host's source on Linux)
reads cpu count, cpu use, load and memory from METRICS_FILE (JSON) at every sample, so a
test changes "a host's load" by rewriting that file. Fields and defaults::

    {"cpu_count": 4, "cpu_percent": 5.0, "load1": 0.2, "mem_total": 8 GiB,
     "mem_available": 6 GiB}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from hafleet_agent import metrics

DEFAULTS = {
    "cpu_count": 4,
    "cpu_percent": 5.0,
    "load1": 0.2,
    "mem_total": 8 << 30,
    "mem_available": 6 << 30,
}


class FileSource(metrics.ProcSource):
    path: Path

    def _read(self) -> dict:
        try:
            return {**DEFAULTS, **json.loads(self.path.read_text())}
        except (OSError, ValueError):
            return dict(DEFAULTS)

    def cpu_count(self) -> int:
        return int(self._read()["cpu_count"])

    def cpu_percent(self, interval: float | None = None) -> float:
        return float(self._read()["cpu_percent"])

    def getloadavg(self) -> tuple[float, float, float]:
        load1 = float(self._read()["load1"])
        return load1, load1, load1

    def virtual_memory(self) -> SimpleNamespace:
        d = self._read()
        return SimpleNamespace(total=int(d["mem_total"]), available=int(d["mem_available"]))


def write_metrics(path: Path, **values: float) -> None:
    """Rewrite a metrics file atomically (an agent may be reading it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**DEFAULTS, **values}))
    tmp.replace(path)


def main() -> int:
    FileSource.path = Path(sys.argv[1])
    metrics.ProcSource = FileSource  # type: ignore[misc]
    from hafleet_agent.cli import main as agent_main

    return agent_main(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
