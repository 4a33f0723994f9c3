"""``make bench-balancer-ha``: how fast the balancers' virtual address moves (issue 18).

A machines lab of its own (``hfbha-``, bridge ``hfbha1``, 10.79.50.0/24; docs/machines.md):
3 pool machines and 2 balancer machines, made by ``hack/machines.py up``; then
``playbooks/scale.yml -e provider=inventory -e nodes=3 -e balancer_vip=10.79.50.250``, so
keepalived holds the virtual address on one balancer machine (roles/balancer: VRRPv3,
advertisements every 0.1 s, no preemption). Each trial:

1. a steady load from the host to ``http://VIP:8080/`` (``--rate`` requests a second, each
   on a new connection, each given 1 s);
2. after 2 s, the machine holding the address loses its power: its link goes down (the
   host's end of its veth) and every process of the machine (its cgroup: the supervisor,
   systemd-nspawn, systemd, keepalived, HAProxy, ...) gets SIGKILL; no goodbye is sent;
3. the window: from that instant to the end of the first request *sent after it* that
   succeeded (it can only have gone through the other machine); F counts the requests sent
   after the window closed that failed (the target is 0);
4. the machine is booted again (``up``) and waits, as a backup, until it is ready again.

Then keepalived's own timing defaults (VRRPv2, ``advert_int 1``) go on the same machines
(bench/balancer_ha_vip.yml: the role's tasks) and are measured the same way.

Prints ``vip-failover: trials=N median_s=X max_s=Y failed=F`` (the tuned settings) and
``keepalived-defaults: ...``; writes ``bench/results/balancer_ha.json``,
``docs/bench-balancer-ha.png`` and the section between the ``balancer-ha`` markers of
docs/benchmarks.md. ``--mode haproxy`` kills the holder's HAProxy (``systemctl kill -s
KILL``) instead of the machine. Root; every wait has a deadline; the lab is removed at the end
(``--keep`` keeps it).

    python bench/balancer_ha_bench.py [--trials 10] [--default-trials 5] [--mode power]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))
from machines import plan as P  # noqa: E402
from machines.host import kill_cgroup  # noqa: E402

PY = sys.executable  # bench/.venv's (matplotlib), or any Python 3.11+ (--no-doc)
BIN = REPO / ".venv" / "bin"  # the checkout's ansible-core (make venv)
HOME = Path("/var/tmp/hfbha/home")
RESULTS = REPO / "bench" / "results" / "balancer_ha.json"
DOC = REPO / "docs" / "benchmarks.md"
PLOT = REPO / "docs" / "bench-balancer-ha.png"
BEGIN, END = "<!-- balancer-ha:begin -->", "<!-- balancer-ha:end -->"
TUNED = {"label": "hafleet (VRRPv3, advert_int 0.1)", "extra": []}
DEFAULTS = {
    "label": "keepalived defaults (VRRPv2, advert_int 1)",
    "extra": [
        "-e",
        "balancer_vrrp_version=2",
        "-e",
        "balancer_vrrp_advert_int=1",
        "-e",
        "balancer_vrrp_auth_pass=hfbha-pw",
    ],
}


def say(text: str) -> None:
    print(f"bench-balancer-ha: {text}", file=sys.stderr, flush=True)


def run(cmd: list[str], timeout: float = 900, check: bool = True, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{tail}")
    return proc.stdout


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lab = P.Lab(
            prefix=args.prefix, bridge=args.bridge, subnet=args.subnet, nodes=3, balancers=2
        )
        self.lab.check()
        self.vip = args.vip or str(self.lab.network.network_address + 250)
        self.out = REPO / "build" / self.lab.out_name
        self.lbs = [m for m in self.lab.machines() if m.role == "balancer"]
        self.env = dict(os.environ, HOME=str(HOME), ANSIBLE_FORCE_COLOR="0")
        self.env["PATH"] = f"{BIN}:{self.env.get('PATH', '')}"

    def machines(self, command: str) -> None:
        lab = self.lab
        run(
            [PY, str(REPO / "hack/machines.py"), command, "--nodes", "3", "--balancers", "2"]
            + ["--prefix", lab.prefix, "--bridge", lab.bridge, "--subnet", lab.subnet]
            + ["--out", str(self.out)],
            timeout=600,
        )

    def playbook(self, path: str, extra: list[str]) -> float:
        """Runs a playbook against the lab; its whole output goes to HOME/../NAME.log."""
        started = time.monotonic()
        log = HOME.parent / f"{Path(path).stem}.log"
        with open(log, "w") as out:
            proc = subprocess.run(
                [str(BIN / "ansible-playbook"), "-i", str(self.out / "hosts.yml"), path]
                + ["-e", "provider=inventory", "-e", "nodes=3", "-e", f"balancer_vip={self.vip}"]
                + ["-e", f"hafleet_cluster_name={self.lab.name}"]
                + extra,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1800,
                cwd=REPO,
                env=self.env,
            )
        if proc.returncode != 0:
            text = log.read_text()
            lines = text.splitlines()
            fatal = [
                "\n".join(lines[i : i + 12])
                for i, x in enumerate(lines)
                if x.startswith(("fatal:", "failed:"))
            ]
            raise RuntimeError(f"{path} failed ({proc.returncode}); {log}:\n" + "\n".join(fatal))
        return time.monotonic() - started

    def ssh(self, m: P.Machine, command: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-i", str(self.out / "id_ed25519"), "-o", "BatchMode=yes"]
            + ["-o", "StrictHostKeyChecking=yes"]
            + ["-o", f"UserKnownHostsFile={self.out / 'known_hosts'}"]
            + ["-o", "ConnectTimeout=3", f"{P.USER}@{m.address}", command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def holders(self) -> list[P.Machine]:
        found = []
        for m in self.lbs:
            out = run(["ip", "-n", m.name, "-o", "-4", "addr", "show"], check=False)
            if f" {self.vip}/" in out:
                found.append(m)
        return found

    def wait_ready(self, timeout: float = 120) -> P.Machine:
        """Both balancer machines run keepalived, HAProxy and the syncer; exactly one holds the
        address, and each keepalived has entered a state since its last start."""
        deadline = time.monotonic() + timeout
        units = "keepalived hafleet-balancer-haproxy hafleet-balancer"
        while time.monotonic() < deadline:
            held = self.holders()
            good = len(held) == 1
            for m in self.lbs if good else []:
                try:
                    r = self.ssh(
                        m,
                        f"systemctl is-active {units}; sudo journalctl -b -u "
                        "keepalived --no-pager -n 200 -o cat",
                    )
                except subprocess.TimeoutExpired:
                    good = False
                    break
                lines = r.stdout.splitlines()
                last = [x for x in lines if "Entering" in x or "Starting VRRP" in x]
                good &= lines[:3] == ["active"] * 3 and bool(last) and "Entering" in last[-1]
                want = "MASTER" if m is held[0] else "BACKUP"
                good &= bool(last) and want in last[-1]
            if good:
                return held[0]
            time.sleep(0.5)
        raise RuntimeError(f"the balancer machines were not ready within {timeout}s")

    # ---- one trial ---------------------------------------------------------------------

    async def _request(self, log: list) -> None:
        sent = time.monotonic()
        ok = False
        writer = None
        try:
            async with asyncio.timeout(1.0):
                reader, writer = await asyncio.open_connection(self.vip, 8080)
                writer.write(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
                head = await reader.readline()
                ok = head.split(b" ")[1:2] == [b"200"]
                await reader.read()
        except (OSError, TimeoutError, IndexError, ValueError):
            ok = False
        finally:
            if writer is not None:
                writer.close()
        log.append((sent, time.monotonic(), ok))

    def _kill(self, m: P.Machine) -> float:
        """The instant the holder stopped serving: taken once the kill is done, so that no
        request sent after it can still have reached the old holder."""
        if self.args.mode == "haproxy":
            self.ssh(m, "sudo systemctl kill -s KILL hafleet-balancer-haproxy.service")
            return time.monotonic()
        run(["ip", "link", "set", m.veth, "down"])  # the power (and so the link) goes
        at = time.monotonic()
        kill_cgroup(m.name)
        return at

    async def _trial(self, victim: P.Machine, after: float) -> tuple[float, list]:
        log: list = []
        loop = asyncio.get_running_loop()
        step = 1.0 / self.args.rate
        start = time.monotonic()
        tasks, killed, kill_at = set(), None, 0.0
        n = 0
        while True:
            now = time.monotonic()
            if killed is None and now - start >= 2.0:
                killed = loop.run_in_executor(None, self._kill, victim)
            if killed is not None and killed.done():
                kill_at = kill_at or killed.result()
                if now - kill_at >= after:
                    break
            t = asyncio.create_task(self._request(log))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, start + n * step - time.monotonic()))
        await asyncio.gather(*tasks)
        return kill_at, sorted(log)

    def trial(self, after: float) -> dict:
        victim = self.wait_ready()
        kill_at, log = asyncio.run(self._trial(victim, after))
        before = [r for r in log if r[0] < kill_at]
        later = [r for r in log if r[0] >= kill_at]
        first = next((r for r in later if r[2]), None)
        window = first[1] - kill_at if first else float("nan")
        failed_after = [r for r in later if first and r[0] >= first[1] and not r[2]]
        # Restore: a machine that lost its power comes back without the address (as after a
        # real power cut: the namespace kept it, a machine's memory would not have).
        if self.args.mode == "power":
            run(
                ["ip", "-n", victim.name, "addr", "del", f"{self.vip}/32", "dev", "eth0"],
                check=False,
            )
            self.machines("up")
        return {
            "victim": victim.name,
            "window_s": round(window, 3),
            "failed_after": len(failed_after),
            "failed_before_kill": sum(1 for r in before if not r[2]),
            "failed_in_window": sum(1 for r in later if not r[2]) - len(failed_after),
            "requests": len(log),
            "timeline": [(round(s - kill_at, 3), round(e - kill_at, 3), ok) for s, e, ok in log],
        }

    def measure(self, setting: dict, trials: int, after: float) -> dict:
        rows = []
        for i in range(trials):
            r = self.trial(after)
            say(
                f"{setting['label']}: trial {i + 1}/{trials}: {r['victim']} killed, window "
                f"{r['window_s']:.3f}s, failed after {r['failed_after']}, in window "
                f"{r['failed_in_window']}"
            )
            rows.append(r)
        wins = [r["window_s"] for r in rows]
        return {
            "label": setting["label"],
            "trials": rows,
            "n": len(rows),
            "median_s": round(statistics.median(wins), 3),
            "max_s": round(max(wins), 3),
            "failed": sum(r["failed_after"] for r in rows),
            "failed_before_kill": sum(r["failed_before_kill"] for r in rows),
        }


def line(name: str, res: dict) -> str:
    return (
        f"{name}: trials={res['n']} median_s={res['median_s']:.3f} "
        f"max_s={res['max_s']:.3f} failed={res['failed']}"
    )


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [results["tuned"], results["defaults"]]
    colors = ["tab:blue", "tab:orange"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=[1, 1.6])
    for i, (res, color) in enumerate(zip(sets, colors, strict=True)):
        wins = [r["window_s"] for r in res["trials"]]
        left.boxplot(
            [wins], positions=[i], widths=0.5, showfliers=False, medianprops={"color": "black"}
        )
        left.scatter([i] * len(wins), wins, color=color, s=14, zorder=3)
    left.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    left.set_xticks([0, 1], ["hafleet\nVRRPv3, 0.1 s", "keepalived defaults\nVRRPv2, 1 s"])
    left.set_ylabel("holder's power cut → first request served (s)")
    left.set_ylim(bottom=0)
    left.grid(axis="y", alpha=0.3)
    left.set_title("Window per trial", fontsize=10)
    for res, color in zip(sets, colors, strict=True):
        tl = res["trials"][len(res["trials"]) // 2]["timeline"]
        ok = [(s, e - s) for s, e, good in tl if good]
        bad = [(s, e - s) for s, e, good in tl if not good]
        right.scatter(
            [s for s, _ in ok],
            [d for _, d in ok],
            s=6,
            color=color,
            label=f"{res['label']}: served",
        )
        right.scatter(
            [s for s, _ in bad],
            [d for _, d in bad],
            s=14,
            marker="x",
            color=color,
            label=f"{res['label']}: failed",
        )
    right.axvline(0, color="black", linewidth=0.8)
    right.set_xlabel("request sent, s after the power cut (one trial each)")
    right.set_ylabel("request time (s; failed at 1 s = timeout)")
    right.legend(fontsize=7, loc="center right")
    right.grid(alpha=0.3)
    right.set_title("Requests around the power cut", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def section(results: dict) -> str:
    t, d = results["tuned"], results["defaults"]
    rows = "\n".join(
        f"| {r['label']} | {r['n']} | {r['median_s']:.3f} | {r['max_s']:.3f} | {r['failed']} | "
        f"{', '.join(format(x['window_s'], '.2f') for x in r['trials'])} |"
        for r in (t, d)
    )
    ok = t["median_s"] <= 1.0 and t["max_s"] <= 2.0 and t["failed"] == 0
    return f"""{BEGIN}
## The balancers' virtual address (`make bench-balancer-ha`)

Two balancer machines and three pool machines of the machines lab, `scale.yml -e
balancer_vip={results["vip"]}`; a steady {results["rate"]} requests/s from the host to
`http://{results["vip"]}:8080/` (a new connection each, 1 s each); the machine holding the
address loses its power (its link down and every process of the machine SIGKILLed, nothing
sent on the way out; `--mode haproxy` kills its HAProxy instead; this run: {results["mode"]}),
then boots again and rejoins as a backup. **Window**:
from the cut to the end of the first request sent after it that was served (through the other
machine); **failed**: requests sent after the window that failed (bench/balancer_ha_bench.py).
Both settings measured in the same run on the same machines ({results["date"]}, at
{results.get("commit", "?")}; this machine kind: 2 cores shared with other work, load average
{results.get("load", "?")} at the end).

| settings | trials | median (s) | max (s) | failed | each trial (s) |
|---|---|---|---|---|---|
{rows}

```
{line("vip-failover", t)}
{line("keepalived-defaults", d)}
```

Acceptance (median ≤ 1.0 s, max ≤ 2.0 s, failed = 0): {"met" if ok else "**not met**"}.
A backup takes over once it has heard no advertisement for 3 × `advert_int` plus a skew of
(256 − priority)/256 × `advert_int`, counted from the last one it heard, which left up to one
`advert_int` before the cut: 2.6–3.6 s with keepalived's defaults, 0.26–0.36 s with hafleet's;
the window adds the new holder's gratuitous ARP and the request itself. Requests sent during
the window fail (they time out); none after it.

![the window per trial, and the requests around one cut](bench-balancer-ha.png)
{END}"""


def write_doc(results: dict) -> None:
    text = DOC.read_text()
    block = section(results)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        marker = "\n## Machine, versions, commands"
        text = (
            text.replace(marker, "\n" + block + "\n" + marker, 1)
            if marker in text
            else text.rstrip("\n") + "\n\n" + block + "\n"
        )
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--default-trials", type=int, default=5)
    parser.add_argument("--rate", type=float, default=50.0, help="requests a second")
    parser.add_argument("--mode", choices=("power", "haproxy"), default="power")
    parser.add_argument("--prefix", default="hfbha-")
    parser.add_argument("--bridge", default="hfbha1")
    parser.add_argument("--subnet", default="10.79.50.0/24")
    parser.add_argument("--vip", default="")
    parser.add_argument("--keep", action="store_true", help="keep the lab afterwards")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("run as root (the machines lab)")
        return 2
    bench = Bench(args)
    HOME.mkdir(parents=True, exist_ok=True)
    try:
        say(f"machines lab {bench.lab.name}: 3 pool + 2 balancer machines")
        bench.machines("up")
        took = bench.playbook("playbooks/scale.yml", [])
        say(f"scale.yml (3 nodes, 2 balancers, VIP {bench.vip}) in {took:.0f}s")
        tuned = bench.measure(TUNED, args.trials, after=4.0)
        bench.playbook("bench/balancer_ha_vip.yml", DEFAULTS["extra"])
        defaults = bench.measure(DEFAULTS, args.default_trials, after=7.0)
    finally:
        if not args.keep:
            bench.machines("down")
            shutil.rmtree(HOME / ".hafleet" / bench.lab.name, ignore_errors=True)
    results = {
        "vip": bench.vip,
        "rate": args.rate,
        "mode": args.mode,
        "date": datetime.date.today().isoformat(),
        "host": platform.node(),
        "commit": run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False
        ).strip(),
        "load": round(os.getloadavg()[0], 1),
        "tuned": tuned,
        "defaults": defaults,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    if not args.no_doc:
        plot(results, PLOT)
        write_doc(results)
    print(line("keepalived-defaults", defaults))
    print(line("vip-failover", tuned))
    return 0


if __name__ == "__main__":
    sys.exit(main())
