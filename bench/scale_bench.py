"""Time ``make lab`` and the scale playbook on the default lab, as a new user runs them (root;
``make bench-scale``).

1. ``make lab NODES=7`` in a fresh clone of this checkout's HEAD: from nothing (no ``.venv``,
   no lab virtualenv, no namespaces) to seven voters behind HAProxy and a status table;
   200 requests through HAProxy must reach all seven nodes;
2. ``ansible-playbook playbooks/scale.yml -e nodes=5 --check --diff`` (shows what would
   change; afterwards HAProxy still reaches all 7), then ``-e nodes=7`` again, which must
   report ``changed=0`` (so the check run changed nothing);
3. ``-e nodes=3`` then ``-e nodes=7``, each under a bounded load through HAProxy
   (``tests/agent/collection/loadgen.py``: a fixed rate, every 10th request slow) that must
   see zero failed requests;
4. ``playbooks/destroy.yml``, also when a step fails; then no namespace, link, process or
   file of the lab may be left.

It uses the default lab (bridge ``hafleet0``, 10.77.0.0/24, ``/var/lib/hafleet-lab``) and
refuses to start when one is there. ``make bench`` (issue 8, ``bench/scale_lab.py``) measures
the playbook on a lab of its own; this one measures ``make lab`` itself, from a fresh clone.
Results: ``bench/results/scale_bench.json`` and a Markdown table on stdout. ``--clone DIR``
reuses (or makes) a clone; ``--agent-source DIR`` builds the agent from another directory
(to measure an agent change before it lands).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOADGEN = REPO / "tests" / "agent" / "collection" / "loadgen.py"
sys.path.insert(0, str(REPO / "tests" / "support"))
from netlab import list_links, list_namespaces  # noqa: E402

LAB_URL = "http://127.0.0.1:8080/"
LAB_ROOT = "/var/lib/hafleet-lab"
STEP_TIMEOUT = 3600


def run(argv, cwd, log, env=None, timeout=STEP_TIMEOUT) -> dict:
    began = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(
            argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout
        )
    seconds = time.monotonic() - began
    text = Path(log).read_text()
    changed = sum(int(n) for n in re.findall(r"^\S+\s+:\s+ok=\d+\s+changed=(\d+)", text, re.M))
    return {
        "seconds": round(seconds, 1),
        "changed": changed,
        "rc": proc.returncode,
        "log": str(log),
    }


def with_load(argv, cwd, log, env, rate, out) -> dict:
    stop = Path(out).with_suffix(".stop")
    ready = Path(out).with_suffix(".ready")
    stop.unlink(missing_ok=True)
    ready.unlink(missing_ok=True)
    load = subprocess.Popen(
        [sys.executable, str(LOADGEN), "--url", LAB_URL, "--rate", str(rate),
         "--duration", str(STEP_TIMEOUT), "--stop-file", str(stop),
         "--slow-every", "10", "--slow-ms", "300", "--out", str(out),
         "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # The step starts once the load is flowing: its first request has been answered.
        deadline = time.monotonic() + 30
        while not ready.exists():
            if load.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the load generator got no answer through HAProxy")
            time.sleep(0.1)
        step = run(argv, cwd, log, env)
    finally:
        stop.touch()
        load.wait(timeout=120)
    step["load"] = json.loads(Path(out).read_text())
    return step


def nodes_reached(requests: int = 200) -> list[str]:
    """The distinct nodes (``X-Node``) that ``requests`` plain GETs through HAProxy reach."""
    seen = set()
    for _ in range(requests):
        with urllib.request.urlopen(LAB_URL, timeout=5) as resp:
            seen.add(resp.headers["X-Node"])
    return sorted(seen)


def lab_footprint() -> dict:
    """What the lab leaves on the host: namespaces, links, its directory, its processes."""
    procs = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if LAB_ROOT in cmd:
                procs.append(int(d.name))
    return {
        "netns": sorted(n for n in list_namespaces() if re.fullmatch(r"hafleet-node\d+", n)),
        "links": sorted(n for n in list_links() if re.fullmatch(r"hafleet-v\d+p?|hafleet0", n)),
        "lab_dir": Path(LAB_ROOT).exists(),
        "pids": sorted(procs),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clone", help="use this clone (made when missing; kept)")
    p.add_argument("--rate", type=float, default=100.0, help="requests/s during scale steps")
    p.add_argument("--agent-source", help="build the agent from this directory")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "scale_bench.json"))
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("scale_bench: needs root (the lab makes network namespaces)")
    if lab_footprint()["netns"] or Path(LAB_ROOT).exists():
        sys.exit(
            "scale_bench: a lab is there; remove it first (ansible-playbook playbooks/destroy.yml)"
        )

    clone = Path(a.clone) if a.clone else Path(tempfile.mkdtemp(prefix="hafleet-bench-"))
    if not (clone / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    fresh_venv = not (clone / ".venv").exists()
    logs = Path(tempfile.mkdtemp(prefix="hafleet-bench-logs-"))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(clone / "build" / "collections"))
    extra = ["-e", f"agent_source_dir={a.agent_source}"] if a.agent_source else []
    playbook = [str(clone / ".venv" / "bin" / "ansible-playbook")]
    scale = [*playbook, "playbooks/scale.yml"]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True
    ).stdout.strip()
    results = {
        "commit": commit,
        "agent_source": a.agent_source or "the clone's agent/",
        "fresh_venv": fresh_venv,
        "rate": a.rate,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
        "steps": {},
    }
    steps = results["steps"]
    ok = True
    try:
        print("make lab NODES=7 (from nothing) ...", flush=True)
        lab_args = [f"LAB_ARGS={' '.join(extra)}"] if extra else []
        steps["make lab NODES=7, from nothing"] = step = run(
            ["make", "lab", "NODES=7", *lab_args], clone, logs / "make-lab.log"
        )
        ok = step["rc"] == 0
        if ok:
            text = Path(step["log"]).read_text()
            step["status_table"] = "leader" in text and "voter" in text
            step["nodes_reached"] = reached = nodes_reached()
            results["footprint_with_lab"] = lab_footprint()
            print(f"  reached through HAProxy: {reached}", flush=True)
            ok = len(reached) == 7 and step["status_table"]
        if ok:
            print("scale.yml nodes=5 --check --diff ...", flush=True)
            steps["7 to 5, --check --diff"] = step = run(
                [*scale, "-e", "nodes=5", "--check", "--diff", *extra], clone,
                logs / "check5.log", env,
            )  # fmt: skip
            text = Path(step["log"]).read_text()
            step["diff_lines"] = sum(1 for line in text.splitlines() if line[:1] in "+-")
            step["nodes_reached_after"] = reached = nodes_reached()
            ok = step["rc"] == 0 and len(reached) == 7
        if ok:
            print("scale.yml nodes=7 again ...", flush=True)
            steps["7 to 7 (no change)"] = step = run(
                [*scale, "-e", "nodes=7", *extra], clone, logs / "7to7.log", env
            )
            ok = step["rc"] == 0 and step["changed"] == 0
        for n, name in ((3, "7 to 3, under load"), (7, "3 to 7, under load")):
            if ok:
                print(f"scale.yml nodes={n} under load ...", flush=True)
                steps[name] = step = with_load(
                    [*scale, "-e", f"nodes={n}", *extra], clone, logs / f"to{n}.log", env,
                    a.rate, logs / f"load-to{n}.json",
                )  # fmt: skip
                ok = step["rc"] == 0
    finally:
        print("destroy.yml ...", flush=True)
        steps["destroy"] = run(
            [*playbook, "playbooks/destroy.yml"], clone, logs / "destroy.log", env
        )
        results["footprint_after_destroy"] = left = lab_footprint()
        steps["destroy"]["clean"] = clean = not any(left.values())
        if not clean:
            print(f"destroy left behind: {left}", flush=True)
        results["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
        if not a.clone:
            shutil.rmtree(clone, ignore_errors=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {a.out} (logs in {logs})\n")
    print("| step | seconds | changed | requests through HAProxy (failed) |")
    print("| --- | --- | --- | --- |")
    for name, step in steps.items():
        load = step.get("load")
        req = f"{load['sent']} ({load['failed']})" if load else "-"
        print(f"| {name} | {step['seconds']:.0f} | {step['changed']} | {req} |")
    print(f"\ndestroy left nothing behind: {steps['destroy']['clean']}")
    return 0 if ok and steps["destroy"]["rc"] == 0 and steps["destroy"]["clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
