"""Time ``make lab`` and the scale playbook as a new user runs them, against issue 19's targets
(root; ``make bench-scale``).

0. ``make venv`` in a fresh clone of this checkout's HEAD (the one-time venv; not part of the
   targets);
1. ``make lab NODES=7``: from no lab (no lab virtualenv, no namespaces) to seven voters behind
   HAProxy and a status table; 200 requests through HAProxy must reach all seven nodes;
2. ``ansible-playbook playbooks/scale.yml -e nodes=5 --check --diff`` (shows what would
   change; afterwards HAProxy still reaches all 7), then ``-e nodes=7`` again, which must
   report ``changed=0`` (so the check run changed nothing);
3. ``-e nodes=3`` then ``-e nodes=7``, each under a bounded load through HAProxy
   (``tests/agent/collection/loadgen.py``: a fixed rate, every 10th request slow) that must
   see zero failed requests;
4. ``playbooks/destroy.yml``, also when a step fails; then no namespace, link, process or
   file of the lab may be left.

The targets (issue 19): ``make lab NODES=7`` <= 60 s, the no-change rerun at 7 <= 15 s,
7 -> 3 <= 30 s, 3 -> 7 <= 45 s.

By default it uses the default lab (bridge ``hafleet0``, 10.77.0.0/24, ``/var/lib/hafleet-lab``,
HAProxy on 127.0.0.1:8080) and refuses to start when one is there. ``--lab TAG --subnet CIDR``
runs the same steps on a lab of its own (bridge ``TAGb0``, namespaces ``TAG-node1``.., veths
``TAG-v1``.., cluster ``TAG``, root ``/var/lib/hafleet-lab-TAG``, HAProxy on a free 127.0.0.1
port), so it can run beside other labs. ``--venv DIR`` takes an existing tools venv instead of
``make venv`` and runs what ``make lab`` runs (scale.yml, then status.yml) with it directly.
``--profile DIR`` writes each step's task timings there (tests/support/callbacks/
hafleet_timer.py). ``make bench`` (``bench/scale_lab.py``) measures the playbook on a lab of
its own with cached virtualenvs; this one measures ``make lab`` itself, from a fresh clone.
Results: ``bench/results/scale_bench.json`` and a Markdown table on stdout. ``--clone DIR``
reuses (or makes) a clone; ``--agent-source DIR`` builds the agent from another directory
(to measure an agent change before it lands).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOADGEN = REPO / "tests" / "agent" / "collection" / "loadgen.py"
CALLBACKS = REPO / "tests" / "support" / "callbacks"
sys.path.insert(0, str(REPO / "tests" / "support"))
from netlab import list_links, list_namespaces  # noqa: E402

STEP_TIMEOUT = 3600
# Issue 19's targets, seconds (fresh clone, quiet machine).
TARGETS = {
    "make lab NODES=7": 60,
    "7 to 7 (no change)": 15,
    "7 to 3, under load": 30,
    "3 to 7, under load": 45,
}


class Lab:
    """The lab's names: the default one, or one of its own (``--lab TAG``)."""

    def __init__(self, tag: str | None, subnet: str | None):
        if tag is None:
            self.bridge, self.prefix, self.veth = "hafleet0", "hafleet-node", "hafleet-v"
            self.root, self.url, self.vars = "/var/lib/hafleet-lab", "http://127.0.0.1:8080/", {}
            return
        if not re.fullmatch(r"[a-z][a-z0-9]{1,7}", tag) or not subnet:
            sys.exit("scale_bench: --lab TAG (2-8 of a-z0-9) needs --subnet CIDR")
        ipaddress.ip_network(subnet)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.bridge, self.prefix, self.veth = f"{tag}b0", f"{tag}-node", f"{tag}-v"
        self.root, self.url = f"/var/lib/hafleet-lab-{tag}", f"http://127.0.0.1:{port}/"
        self.vars = {
            "hafleet_lab_root": self.root,
            "hafleet_lab_bridge": self.bridge,
            "hafleet_lab_subnet": subnet,
            "hafleet_lab_prefix": self.prefix,
            "hafleet_lab_veth_prefix": self.veth,
            "hafleet_cluster_name": tag,
            "hafleet_balancer_listen": [f"127.0.0.1:{port}"],
        }

    def footprint(self) -> dict:
        """What the lab leaves on the host: namespaces, links, its directory, its processes."""
        procs = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if self.root + "/" in cmd:
                    procs.append(int(d.name))
        ns_re = re.escape(self.prefix) + r"\d+"
        link_re = re.escape(self.veth) + r"\d+p?|" + re.escape(self.bridge)
        return {
            "netns": sorted(n for n in list_namespaces() if re.fullmatch(ns_re, n)),
            "links": sorted(n for n in list_links() if re.fullmatch(link_re, n)),
            "lab_dir": Path(self.root).exists(),
            "pids": sorted(procs),
        }


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def run(argv, cwd, log, env=None, timeout=STEP_TIMEOUT) -> dict:
    """One step; ``cpu_seconds`` is the CPU its processes used (the playbook, its workers and
    module runs; not the agents it starts), which a busy machine does not inflate as it does
    the wall time."""
    began, cpu = time.monotonic(), _children_cpu()
    with open(log, "w") as out:
        proc = subprocess.run(
            argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout
        )
    seconds = time.monotonic() - began
    cpu = _children_cpu() - cpu
    text = Path(log).read_text()
    changed = sum(int(n) for n in re.findall(r"^\S+\s+:\s+ok=\d+\s+changed=(\d+)", text, re.M))
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "changed": changed,
        "rc": proc.returncode,
        "log": str(log),
    }


def with_load(argv, cwd, log, env, rate, out, url) -> dict:
    stop = Path(out).with_suffix(".stop")
    ready = Path(out).with_suffix(".ready")
    stop.unlink(missing_ok=True)
    ready.unlink(missing_ok=True)
    load = subprocess.Popen(
        [sys.executable, str(LOADGEN), "--url", url, "--rate", str(rate),
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


def nodes_reached(url: str, requests: int = 200) -> list[str]:
    """The distinct nodes (``X-Node``) that ``requests`` plain GETs through HAProxy reach."""
    seen = set()
    for _ in range(requests):
        with urllib.request.urlopen(url, timeout=5) as resp:
            seen.add(resp.headers["X-Node"])
    return sorted(seen)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clone", help="use this clone (made when missing; kept)")
    p.add_argument("--rate", type=float, default=100.0, help="requests/s during scale steps")
    p.add_argument("--agent-source", help="build the agent from this directory")
    p.add_argument("--lab", metavar="TAG", help="a lab of its own named after TAG")
    p.add_argument("--subnet", help="the own lab's subnet (with --lab), such as 10.79.44.0/24")
    p.add_argument("--venv", help="an existing tools venv (ansible-core) instead of make venv")
    p.add_argument("--skip-check", action="store_true", help="leave out the --check --diff run")
    p.add_argument("--profile", metavar="DIR", help="write each step's task timings here")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "scale_bench.json"))
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("scale_bench: needs root (the lab makes network namespaces)")
    lab = Lab(a.lab, a.subnet)
    if lab.footprint()["netns"] or Path(lab.root).exists():
        sys.exit(f"scale_bench: a lab is there ({lab.root}, {lab.prefix}*); remove it first")

    clone = Path(a.clone) if a.clone else Path(tempfile.mkdtemp(prefix="hafleet-bench-"))
    if not (clone / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    venv = Path(a.venv).resolve() if a.venv else clone / ".venv"
    fresh_venv = not venv.exists()
    logs = Path(tempfile.mkdtemp(prefix="hafleet-bench-logs-"))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(clone / "build" / "collections"))
    if a.profile:
        Path(a.profile).mkdir(parents=True, exist_ok=True)
        env.update(
            ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS), ANSIBLE_CALLBACKS_ENABLED="hafleet_timer"
        )
    extra = ["-e", f"agent_source_dir={a.agent_source}"] if a.agent_source else []
    if lab.vars:
        (logs / "lab-vars.json").write_text(json.dumps(lab.vars))
        extra += ["-e", f"@{logs / 'lab-vars.json'}"]
    playbook = [str(venv / "bin" / "ansible-playbook")]
    scale = [*playbook, "playbooks/scale.yml"]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True
    ).stdout.strip()
    results = {
        "commit": commit,
        "agent_source": a.agent_source or "the clone's agent/",
        "fresh_venv": fresh_venv,
        "lab": {"bridge": lab.bridge, "prefix": lab.prefix, "root": lab.root, "url": lab.url},
        "rate": a.rate,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
        "targets": TARGETS,
        "steps": {},
    }
    steps = results["steps"]

    def timed(name, argv, log, load=False):
        step_env = dict(env, HAFLEET_TIMER_OUT=str(Path(a.profile) / f"{log}.json"))
        if not a.profile:
            step_env.pop("HAFLEET_TIMER_OUT")
        if load:
            out = logs / f"load-{log}.json"
            steps[name] = with_load(
                argv, clone, logs / f"{log}.log", step_env, a.rate, out, lab.url
            )
        else:
            steps[name] = run(argv, clone, logs / f"{log}.log", step_env)
        return steps[name]

    ok = True
    try:
        if not a.venv:
            print("make venv (the one-time venv) ...", flush=True)
            ok = timed("make venv (one time)", ["make", "venv"], "make-venv")["rc"] == 0
        if ok:
            print("make lab NODES=7 (no lab) ...", flush=True)
            if a.venv:
                # What make lab runs (collection-link, scale.yml, status.yml), with this venv.
                link = clone / "build" / "collections" / "ansible_collections" / "hafleet"
                link.mkdir(parents=True, exist_ok=True)
                if not (link / "cluster").is_symlink():
                    (link / "cluster").symlink_to("../../../..")
                script = (
                    f"{scale[0]} playbooks/scale.yml -e nodes=7 {' '.join(extra)} && "
                    f"{scale[0]} playbooks/status.yml {' '.join(extra)}"
                )
                argv = ["bash", "-c", script]
            else:
                argv = [
                    "make",
                    "lab",
                    "NODES=7",
                    *([f"LAB_ARGS={' '.join(extra)}"] if extra else []),
                ]
            step = timed("make lab NODES=7", argv, "make-lab")
            ok = step["rc"] == 0
        if ok:
            text = Path(step["log"]).read_text()
            step["status_table"] = "leader" in text and "voter" in text
            step["nodes_reached"] = reached = nodes_reached(lab.url)
            results["footprint_with_lab"] = lab.footprint()
            print(f"  reached through HAProxy: {reached}", flush=True)
            ok = len(reached) == 7 and step["status_table"]
        if ok and not a.skip_check:
            print("scale.yml nodes=5 --check --diff ...", flush=True)
            step = timed(
                "7 to 5, --check --diff",
                [*scale, "-e", "nodes=5", "--check", "--diff", *extra],
                "check5",
            )
            text = Path(step["log"]).read_text()
            step["diff_lines"] = sum(1 for line in text.splitlines() if line[:1] in "+-")
            step["nodes_reached_after"] = reached = nodes_reached(lab.url)
            ok = step["rc"] == 0 and len(reached) == 7
        if ok:
            print("scale.yml nodes=7 again ...", flush=True)
            step = timed("7 to 7 (no change)", [*scale, "-e", "nodes=7", *extra], "7to7")
            ok = step["rc"] == 0 and step["changed"] == 0
        for n, name in ((3, "7 to 3, under load"), (7, "3 to 7, under load")):
            if ok:
                print(f"scale.yml nodes={n} under load ...", flush=True)
                step = timed(name, [*scale, "-e", f"nodes={n}", *extra], f"to{n}", load=True)
                ok = step["rc"] == 0 and step["load"]["failed"] == 0
    finally:
        print("destroy.yml ...", flush=True)
        steps["destroy"] = run(
            [*playbook, "playbooks/destroy.yml", *extra], clone, logs / "destroy.log", env
        )
        results["footprint_after_destroy"] = left = lab.footprint()
        steps["destroy"]["clean"] = clean = not any(left.values())
        if not clean:
            print(f"destroy left behind: {left}", flush=True)
        results["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
        if not a.clone:
            shutil.rmtree(clone, ignore_errors=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {a.out} (logs in {logs})\n")
    print("| step | seconds | CPU s | target | changed | requests through HAProxy (failed) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, step in steps.items():
        load = step.get("load")
        req = f"{load['sent']} ({load['failed']})" if load else "-"
        target = TARGETS.get(name)
        goal = (
            "-"
            if target is None
            else f"<= {target} ({'met' if step['seconds'] <= target else 'missed'})"
        )
        cpu = step.get("cpu_seconds", 0)
        print(
            f"| {name} | {step['seconds']:.0f} | {cpu:.0f} | {goal} | {step['changed']} | {req} |"
        )
    print(f"\ndestroy left nothing behind: {steps['destroy']['clean']}")
    return 0 if ok and steps["destroy"]["rc"] == 0 and steps["destroy"]["clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
