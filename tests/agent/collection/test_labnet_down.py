"""extensions/molecule/shared/labnet.py down: the molecule scenarios' clean-up (and make
release's) stops what the pid files under the scenario's directory name, by PID and start
time, and only those processes whose command line names that directory."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LABNET = REPO / "extensions" / "molecule" / "shared" / "labnet.py"
IDLE = "import sys, time; time.sleep(300)"  # stopped by the test, never waited for


def test_down_stops_what_the_pid_files_name_and_spares_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "scenario"
    (root / "node1").mkdir(parents=True)
    ours = subprocess.Popen([sys.executable, "-c", IDLE, str(root)])
    other = subprocess.Popen([sys.executable, "-c", IDLE, "elsewhere"])
    try:
        (root / "node1" / "agent.pid").write_text(f"{ours.pid} 0\n")
        (root / "haproxy.pid").write_text(f"{other.pid}\n")  # not started for this scenario
        out = subprocess.run(
            [
                sys.executable,
                str(LABNET),
                "down",
                "--bridge",
                "hfzzb0",
                "--prefix",
                "hfzz-n",
                "--veth",
                "hfzzv",
                "--root",
                str(root),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        report = json.loads(out.stdout)
        assert report["stopped"] == [ours.pid]
        assert report["changed"] and str(root) in report["removed"]
        assert ours.wait(timeout=30) != 0  # it ended by a signal
        assert other.poll() is None, "a process whose command line does not name ROOT"
        assert not root.exists()
    finally:
        for proc in (ours, other):
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
