"""Turn ``bench/results/compare.json`` into ``docs/benchmarks.md`` and ``docs/bench-*.png``.

    python bench/report.py [bench/results/compare.json] [docs/]

The text between ``<!-- analysis:begin -->`` and ``<!-- analysis:end -->`` in an existing
``docs/benchmarks.md`` is hand-written and kept as it is when the page is written again; so
is the text between ``<!-- sections:begin -->`` and ``<!-- sections:end -->`` (the sections
other benchmarks and hand-written notes add: the HTTP server, the converge timings,
machines-e2e, the balancers' virtual address), placed before "Machine, versions, commands".
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BENCH = Path(__file__).resolve().parent
SYS = ("hafleet", "etcd", "pysyncobj")
NAMES = {
    "hafleet": "hafleet",
    "etcd": "etcd",
    "pysyncobj": "PySyncObj",
    "pysyncobj-nobatch": "PySyncObj, no batching",
    "pysyncobj-nofsync": "PySyncObj as shipped (no fsync)",
}
COLORS = {
    "hafleet": "#1f77b4",
    "etcd": "#ff7f0e",
    "pysyncobj": "#2ca02c",
    "pysyncobj-nobatch": "#98df8a",
    "pysyncobj-nofsync": "#bcbd22",
}
BEGIN, END = "<!-- analysis:begin -->", "<!-- analysis:end -->"
SECTIONS_BEGIN, SECTIONS_END = "<!-- sections:begin -->", "<!-- sections:end -->"

# the hand-written "How each system is set up" section
SETUP_MD = BENCH / "report_setup.md"


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else float("nan")


def mmm(xs: list[float], scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    """median [min–max]"""
    xs = [x * scale for x in xs if x is not None and x == x]
    if not xs:
        return "–"
    f = fmt.format
    return f"{f(statistics.median(xs))} [{f(min(xs))}–{f(max(xs))}]"


def ratio(a: float, b: float) -> str:
    if not (a == a and b == b) or b == 0:
        return "–"
    return f"{a / b:.2f}"


def ok(flag: bool | None) -> str:
    return "–" if flag is None else ("met" if flag else "**not met**")


# --- plots --------------------------------------------------------------------------------


def plot_failover(res: dict, path: Path) -> None:
    fo = res.get("failover") or {}
    profiles = sorted({k.split("/")[0] for k in fo}, key=_profile_rank)
    sizes = sorted({int(k.split("/")[1]) for k in fo})
    if not profiles:
        return
    fig, axes = plt.subplots(
        len(profiles), 1, figsize=(9, 3.6 * len(profiles)), squeeze=False, sharey=False
    )
    rnd = random.Random(1)
    for ax, prof in zip(axes[:, 0], profiles, strict=True):
        ticks, labels = [], []
        for gi, n in enumerate(sizes):
            r = fo.get(f"{prof}/{n}")
            if not r:
                continue
            for si, s in enumerate(SYS):
                xs = [v for v in r[s]["leader_s"] if v == v]
                pos = gi * 4 + si
                if xs:
                    ax.boxplot(
                        [xs],
                        positions=[pos],
                        widths=0.7,
                        showfliers=False,
                        medianprops={"color": "black"},
                        boxprops={"color": COLORS[s]},
                        whiskerprops={"color": COLORS[s]},
                        capprops={"color": COLORS[s]},
                    )
                    ax.scatter(
                        [pos + rnd.uniform(-0.25, 0.25) for _ in xs],
                        xs,
                        s=9,
                        color=COLORS[s],
                        alpha=0.7,
                        zorder=3,
                    )
            ticks.append(gi * 4 + 1)
            labels.append(f"{n} members")
        ax.set_xticks(ticks, labels)
        t = (fo.get(f"{prof}/{sizes[0]}") or {}).get("timing") or {}
        title = (
            "each with its own defaults"
            if prof == "defaults"
            else f"all three: heartbeat {t.get('heartbeat_ms')} ms, "
            f"election timeout {t.get('election_ms')} ms"
        )
        fault = "SIGSTOP" if prof == "freeze" else "kill -9"
        what = "SIGSTOP of the leader (frozen)" if prof == "freeze" else "kill -9 of the leader"
        ax.set_title(f"Leader failover after {what} — {title}", fontsize=10)
        ax.set_ylabel(f"{fault} → new leader (s)")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
        for s in SYS:
            ax.scatter([], [], color=COLORS[s], label=NAMES[s])
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _load_rows(block: dict) -> list[tuple[str, str, list[dict]]]:
    rows = []
    for key, by_c in block.items():
        for c, runs in by_c.items():
            rows.append((key, c, runs))
    return rows


def plot_load(res: dict, path: Path) -> None:
    parts = [(op, res[op]) for op in ("writes", "reads") if res.get(op)]
    if not parts:
        return
    fig, axes = plt.subplots(len(parts), 2, figsize=(11, 3.8 * len(parts)), squeeze=False)
    for row, (op, block) in enumerate(parts):
        keys = list(block)
        clients = sorted({int(c) for k in keys for c in block[k]})
        width = 0.8 / len(keys)
        ax_t, ax_l = axes[row]
        for ki, k in enumerate(keys):
            for ci, c in enumerate(clients):
                runs = block[k].get(str(c)) or []
                if not runs:
                    continue
                v = [r["per_s"] for r in runs]
                m = statistics.median(v)
                x = ci + ki * width - 0.4 + width / 2
                ax_t.bar(x, m, width, color=COLORS.get(k, "grey"),
                         label=NAMES.get(k, k) if ci == 0 else None)  # fmt: skip
                ax_t.errorbar(x, m, yerr=[[m - min(v)], [max(v) - m]], color="black",
                              capsize=2, lw=0.8)  # fmt: skip
                p50 = statistics.median(r["p50_ms"] for r in runs)
                p99 = statistics.median(r["p99_ms"] for r in runs)
                ax_l.bar(x, p99, width, color=COLORS.get(k, "grey"), alpha=0.35)
                ax_l.bar(x, p50, width, color=COLORS.get(k, "grey"))
        for ax in (ax_t, ax_l):
            ax.set_xticks(range(len(clients)), [f"{c} client{'s' if c > 1 else ''}"
                                                for c in clients])  # fmt: skip
            ax.grid(axis="y", alpha=0.3)
        what = "100-byte writes, fsync on" if op == "writes" else "linearizable reads"
        ax_t.set_title(f"{what}: operations/s (median, min–max)", fontsize=10)
        ax_l.set_title(f"{what}: latency p50 (solid), p99 (light), ms", fontsize=10)
        ax_l.set_yscale("log")
        ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_ops(res: dict, path: Path) -> None:
    panels = []
    if res.get("join"):
        panels.append(("new member → voter (s)", {s: res["join"][s]["s"] for s in SYS}))
    if res.get("handover"):
        h = res["handover"]
        panels.append(
            (
                "graceful hand-over: request → target leads (ms)",
                {s: [t["handover_s"] * 1000 for t in h[s]["trials"]] for s in SYS if s in h},
            )
        )
        panels.append(
            (
                "hand-over: longest gap between acknowledged writes (ms)",
                {s: [t["blocked_s"] * 1000 for t in h[s]["trials"]] for s in SYS if s in h},
            )
        )
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    rnd = random.Random(2)
    for ax, (title, data) in zip(axes[0], panels, strict=True):
        for i, s in enumerate(SYS):
            xs = [v for v in data.get(s, []) if v == v]
            if not xs:
                continue
            ax.boxplot([xs], positions=[i], widths=0.6, showfliers=False,
                       medianprops={"color": "black"})  # fmt: skip
            ax.scatter([i + rnd.uniform(-0.2, 0.2) for _ in xs], xs, s=12, color=COLORS[s],
                       zorder=3)  # fmt: skip
        ax.set_xticks(range(len(SYS)), [NAMES[s] for s in SYS])
        ax.set_title(title, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def idle_members(res: dict) -> int:
    """How many members of each system the idle section ran (compare.py's --idle-members;
    runs from before that flag, which say nothing, ran 7)."""
    idle = res.get("idle") or {}
    for s in SYS:
        if (idle.get(s) or {}).get("members"):
            return int(idle[s]["members"])
    return int(section_args(res, "idle").get("idle_members") or 7)


def plot_idle(res: dict, path: Path) -> None:
    idle = res.get("idle")
    if not idle:
        return
    n = idle_members(res)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, s in enumerate(SYS):
        w = idle[s]["windows"]
        for j, (field, label) in enumerate(
            (("cpu_leader", "leader"), ("cpu_follower_median", "follower (median)"))
        ):
            v = [x[field] for x in w]
            m = statistics.median(v)
            a1.bar(i + (j - 0.5) * 0.38, m, 0.36, color=COLORS[s], alpha=1 if j == 0 else 0.5,
                   label=label if i == 0 else None)  # fmt: skip
            a1.errorbar(i + (j - 0.5) * 0.38, m, yerr=[[m - min(v)], [max(v) - m]],
                        color="black", capsize=2, lw=0.8)  # fmt: skip
        v = [x["rss_median"] for x in w]
        a2.bar(i, statistics.median(v), 0.6, color=COLORS[s])
    for ax in (a1, a2):
        ax.set_xticks(range(len(SYS)), [NAMES[s] for s in SYS])
        ax.grid(axis="y", alpha=0.3)
    a1.set_title(f"idle CPU per member at {n} members (% of one core)", fontsize=10)
    a1.legend(fontsize=8)
    a2.set_title(f"idle RSS per member at {n} members (MiB, median)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- text ---------------------------------------------------------------------------------


def _cmd(argv: list[str], workdir: str) -> str:
    out = []
    for a in argv:
        a = a.replace(workdir, "$TMP") if workdir else a
        if a.endswith("/bin/python") or a.endswith("/python3"):
            a = "bench/.venv/bin/python"
        a = a.replace(str(BENCH.parent) + "/", "")
        a = re.sub(r"127\.0\.\d+\.", "127.0.N.", a)
        a = re.sub(r"(bench|-)\d+\b", r"\1N", a)
        out.append(a)
    return " ".join(out)


_PROFILES = ("defaults", "tuned", "freeze")  # the failover profiles, in the report's order


def _profile_rank(prof: str) -> int:
    return _PROFILES.index(prof) if prof in _PROFILES else len(_PROFILES)


def _failover_order(key: str) -> tuple[int, int]:
    prof, n = key.split("/")
    return (_profile_rank(prof), int(n))


def failover_section(res: dict, L: list[str]) -> dict:
    fo = res.get("failover") or {}
    facts: dict = {}
    if not fo:
        L.append("Not measured in this run.\n")
        return facts
    L.append(
        "Time from `kill -9` of the leader until a surviving member names a new leader "
        "(each survivor polled every 10 ms), and until the first write is acknowledged (a "
        "new write probe every 50 ms, round-robin over the survivors). Median [min–max] "
        "over the trials, ms; ratios are of medians from this run. A killed process's "
        "connections end at once, and hafleet's followers campaign at one of their next "
        "two ticks when their leader's connection ends (docs/raft.md, *Leader lost*); "
        "etcd and PySyncObj wait for their election timers. The *frozen* rows stop the "
        "leader with SIGSTOP instead (a hung host, or one cut off: its connections stay "
        "open), so every system there waits for its timers; the frozen leader is killed "
        "and started again after each trial.\n"
    )
    L.append(
        "| timing | members | hafleet | etcd | PySyncObj | hafleet ÷ etcd | "
        "hafleet ÷ PySyncObj | first write: hafleet / etcd / PySyncObj | trials (failed) |"
    )
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in sorted(fo, key=_failover_order):
        r = fo[key]
        prof, n = key.split("/")
        t = r.get("timing") or {}
        tl = "own defaults" if prof == "defaults" else f"{t['heartbeat_ms']}/{t['election_ms']} ms"
        if prof == "freeze":
            tl += ", frozen"
        m = {s: med(r[s]["leader_s"]) for s in SYS}
        facts[key] = m
        L.append(
            f"| {tl} | {n} | "
            + " | ".join(mmm(r[s]["leader_s"], 1000) for s in SYS)
            + f" | {ratio(m['hafleet'], m['etcd'])} | {ratio(m['hafleet'], m['pysyncobj'])} | "
            + " / ".join(f"{med(r[s]['write_s']) * 1000:.0f}" for s in SYS)
            + " | "
            + " / ".join(f"{len(r[s]['leader_s'])} ({r[s]['failed']})" for s in SYS)
            + " |"
        )
    L.append("")
    L.append(
        "Where the failover time goes (from the members' own logs, medians in ms): "
        "*detect* = kill → the first survivor gives up its leader (etcd: `became "
        "pre-candidate`, its election timer; hafleet: `leader is now None`, which is the "
        "end of the killed leader's connection, or the election timer for a frozen "
        "leader), *elect* = from there to a leader (`became leader` / `leader is now … - "
        "this node`; for hafleet after a kill it includes the wait for one of the next two "
        "ticks before the campaign, 0-100 ms at a 50 ms tick); the rest is seeing it from "
        "outside. PySyncObj logs nothing of the kind.\n"
    )
    L.append("| timing | members | hafleet detect / elect | etcd detect / elect |")
    L.append("| --- | --- | --- | --- |")
    for key in sorted(fo, key=_failover_order):
        r = fo[key]
        prof, n = key.split("/")
        cells = []
        for s in ("hafleet", "etcd"):
            d, e = med(r[s].get("detect_s", [])), med(r[s].get("elect_s", []))
            cells.append(f"{d * 1000:.0f} / {e * 1000:.0f}" if d == d else "–")
        L.append(f"| {prof} | {n} | {cells[0]} | {cells[1]} |")
    L.append("")
    L.append("![failover](bench-failover.png)\n")
    tr = res.get("election_trace") or {}
    trials = tr.get("trials") or []
    if trials:
        hb, el = (tr.get("timing") or [None, None])[:2]

        def col(k: str) -> str:
            return mmm([t.get(k) for t in trials if t.get(k) is not None], 1000, "{:.1f}")

        L.append(
            f"**Inside hafleet's election** ({tr.get('n')} members, heartbeat {hb} ms, "
            f"election timeout {el} ms, {len(trials)} kills; `bench/hafleet_traced.py` "
            "time-stamps each vote message when a member sends it — after the fsync of its "
            "ready batch — and when the receiver's Raft core steps it; ms, median "
            "[min–max] over the kills, per-hop figures are medians over the answering "
            "peers):\n"
        )
        L.append("| step | ms |")
        L.append("| --- | --- |")
        rows = (
            ("whole election: candidate's pre-votes leave → its first append leaves", "elect"),
            ("pre-vote round (until the quorum-th grant is stepped)", "prevote_round"),
            ("↳ pre-vote in flight: sent → stepped by the peer", "prevote_out"),
            ("↳ peer answers a pre-vote (no fsync)", "prevote_peer"),
            ("↳ grant in flight back", "prevote_back"),
            ("candidate: quorum of pre-votes → votes leave (term and vote fsync'd)",
             "candidate_step"),
            ("vote round", "vote_round"),
            ("↳ vote in flight", "vote_out"),
            ("↳ peer answers a vote (its vote fsync'd first)", "vote_peer"),
            ("↳ grant in flight back", "vote_back"),
            ("new leader: quorum of votes → first append leaves (no-op entry fsync'd)",
             "leader_step"),
            ("one fsync of term/vote (`DiskStorage.save`, median of all in the election)",
             "fsync_median"),
        )  # fmt: skip
        for label, k in rows:
            L.append(f"| {label} | {col(k)} |")
        camps = [t.get("campaigns", 1) for t in trials]
        L.append(
            f"\nPre-vote campaigns the winner needed: median {statistics.median(camps):.1f}, "
            f"max {max(camps)} (a second one when the first met peers still in their "
            "CheckQuorum lease).\n"
        )
    return facts


def load_section(res: dict, op: str, L: list[str]) -> dict:
    block = res.get(op)
    facts: dict = {}
    if not block:
        L.append("Not measured in this run.\n")
        return facts
    unit = "writes/s" if op == "writes" else "reads/s"
    L.append(f"| system | clients | {unit} | p50 ms | p99 ms | errors | hafleet ÷ this ({unit}) |")
    L.append("| --- | --- | --- | --- | --- | --- | --- |")
    for key, by_c in block.items():
        for c, runs in by_c.items():
            rate = med([r["per_s"] for r in runs])
            facts[(key, c)] = rate
    for key, by_c in block.items():
        for c, runs in by_c.items():
            rate = facts[(key, c)]
            h = facts.get(("hafleet", c), float("nan"))
            L.append(
                f"| {NAMES.get(key, key)} | {c} | {mmm([r['per_s'] for r in runs])} | "
                f"{mmm([r['p50_ms'] for r in runs], fmt='{:.1f}')} | "
                f"{mmm([r['p99_ms'] for r in runs], fmt='{:.1f}')} | "
                f"{sum(r['errors'] for r in runs)} | "
                f"{'–' if key == 'hafleet' else ratio(h, rate)} |"
            )
    L.append("")
    return facts


def write(res: dict, docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    make_lab = BENCH / "results" / "scale_bench.json"  # make bench-scale, when it has run
    if make_lab.exists() and "make_lab" not in res:
        res = {**res, "make_lab": json.loads(make_lab.read_text())}
    plot_failover(res, docs / "bench-failover.png")
    plot_load(res, docs / "bench-load.png")
    plot_ops(res, docs / "bench-ops.png")
    plot_idle(res, docs / "bench-idle.png")
    md_path = docs / "benchmarks.md"
    kept = sections = None
    if md_path.exists():
        old = md_path.read_text()
        if BEGIN in old and END in old:
            kept = old[old.index(BEGIN) : old.index(END) + len(END)]
        if SECTIONS_BEGIN in old and SECTIONS_END in old:
            a, b = old.index(SECTIONS_BEGIN), old.index(SECTIONS_END) + len(SECTIONS_END)
            sections = old[a:b]
    md_path.write_text(render(res, kept, sections))


def section_args(res: dict, name: str) -> dict:
    """The parameters section ``name`` was measured with: a merged run's (``--merge --only``)
    for the sections it measured again, else the first run's."""
    return (res.get("section_args") or {}).get(name) or res.get("args", {})


def render(res: dict, kept: str | None, sections: str | None = None) -> str:
    m = res.get("machine", {})
    args = res.get("args", {})
    wd = res.get("workdir", "")
    L: list[str] = []
    L.append("# Benchmarks: hafleet side by side with etcd and PySyncObj\n")
    L.append(
        f"Written by `make bench{' BENCH_QUICK=1' if res.get('quick') else ''}` "
        f"(`bench/compare.py`, then `bench/report.py`) on {res.get('started', '?')}; "
        f"the run took {res.get('durations_s', {}).get('total', float('nan')) / 60:.1f} "
        "minutes. Every member of every system is a real process on its own loopback "
        "address (127.0.50–99.x); the three systems run in the same run, interleaved "
        "round-robin with the order rotated every round, so that the other work on this "
        "shared 2-core machine hits all three alike. Every figure is a median over repeated "
        "runs with [min–max]; every ratio compares medians from this one run (the write "
        "targets also the median of the hafleet/etcd round pairs).\n"
    )
    notes, later = [], set()  # each section named only by the last merge that measured it
    for mg in reversed(res.get("merged", [])):
        names = [n for n in str(mg.get("only") or "").split(",") if n]
        shown_here = [n for n in names if n not in later]
        later.update(names)
        if shown_here:
            notes.append(
                f"Sections `{','.join(shown_here)}` were measured again on {mg.get('started')} "
                "(`bench/compare.py --merge --only ...`) and replace those of the first run.\n"
            )
    L.extend(reversed(notes))
    if res.get("quick"):
        L.append(
            "**This is the quick version** (`BENCH_QUICK=1`): few trials; read it as a smoke "
            "test, not as the figures.\n"
        )

    # summary first, filled after the sections compute their facts
    body: list[str] = []
    body.append(SETUP_MD.read_text())
    body.append("## Leader failover\n")
    fo = failover_section(res, body)
    body.append("## Commit throughput and latency\n")
    wa = section_args(res, "writes")
    body.append(
        "100-byte values, distinct keys, 3 members, fsync on for all three, every request "
        "to the leader over HTTP/1.1 keep-alive from one asyncio client (aiohttp). "
        f"{wa.get('write_rounds') or wa.get('rounds')} rounds of {wa.get('load_seconds')} s "
        "per system and client count (after a short warm-up), interleaved; the targets "
        "compare hafleet and etcd round by round (the median of the round pairs' ratios)."
        + _ALONE.get(bool(res.get("alone", {}).get("writes")), "")
        + "\n"
    )
    wf = load_section(res, "writes", body)
    body.append("## Linearizable reads\n")
    body.append(
        "One key, read by 1 and by 16 clients from the leader: hafleet `GET /v1/kv/KEY` "
        "(ReadIndex), etcd `Range` with `serializable=false` (its default: ReadIndex), "
        "PySyncObj a read command through the Raft log (it has no ReadIndex or lease "
        "reads; its local reads are not linearizable)."
        + _ALONE.get(bool(res.get("alone", {}).get("reads")), "")
        + "\n"
    )
    load_section(res, "reads", body)

    body.append("## New member to voter\n")
    j = res.get("join")
    jf = {}
    if j:
        body.append(
            f"A 3-member cluster preloaded with {section_args(res, 'join').get('preload')} "
            "keys grows by one "
            "member per trial (3→4→…), interleaved. hafleet: start `hafleet-agent run` with "
            "`--join` → the leader's `/v1/members` lists it as `voter`. etcd: "
            "`MemberAdd(isLearner)` (= `etcdctl member add NAME --learner --peer-urls URL`) "
            "→ start etcd with `--initial-cluster-state existing` → `MemberPromote` (= "
            "`etcdctl member promote ID`) retried every 20 ms until accepted (etcd refuses "
            "until the learner has caught up); the clock starts at the accepted add "
            "(etcd's `--strict-reconfig-check` refuses an add until every voter has been "
            "connected for 5 s: that wait is not counted). PySyncObj (`dynamicMembershipChange`"
            "): `addNodeToCluster` on the leader → start the node → it knows the leader and "
            "has applied the log up to the add (it votes as soon as the add commits; it has "
            "no learners).\n"
        )
        body.append("| system | seconds | trials (failed) | hafleet ÷ this |")
        body.append("| --- | --- | --- | --- |")
        for s in SYS:
            jf[s] = med(j[s]["s"])
        for s in SYS:
            body.append(
                f"| {NAMES[s]} | {mmm(j[s]['s'], fmt='{:.2f}')} | {len(j[s]['s'])} "
                f"({j[s]['failed']}) | {'–' if s == 'hafleet' else ratio(jf['hafleet'], jf[s])} |"
            )
        body.append("")
        marks = j["hafleet"].get("marks") or []
        if marks:

            def mm(k: str) -> str:
                return mmm([x.get(k) for x in marks if x.get(k) is not None], 1000)

            body.append(
                "Where hafleet's join time goes (ms after the process is started, from the "
                "agents' logs, median [min–max]): process up and serving (imports, storage, "
                f"transport) {mm('up')}; added as a learner {mm('learner')}; the leader "
                f"decides to promote it (its chores run every 250 ms) {mm('promote')}; "
                f"promotion applied {mm('voter')}.\n"
            )
    else:
        body.append("Not measured in this run.\n")

    body.append("## Graceful leader hand-over\n")
    h = res.get("handover")
    if h:
        body.append(
            "3 members; one client writes sequentially through the member that is neither "
            "the leader nor the target. hafleet: `POST /v1/leadership/transfer "
            '{"to": ID}`; etcd: `MoveLeader` (= `etcdctl move-leader ID`); PySyncObj: '
            "`transferLeadership(node)` (TimeoutNow, new in 0.3.x; it refuses unless the "
            "target's matchIndex equals the leader's last index at that instant, so the "
            "bench retries every 10 ms — the clock starts at the first try). *hand-over* = "
            "request → the target says it leads; *writes blocked* = the longest gap between "
            "two acknowledged writes around the hand-over (it includes one normal write "
            "latency, given for reference). The other systems' clusters run meanwhile (the "
            "load sections pause them; a PySyncObj cluster paused and resumed failed a later "
            "hand-over).\n"
        )
        body.append(
            "| system | hand-over ms | writes blocked ms | normal write ms | failed writes |"
            " trials (failed) |"
        )
        body.append("| --- | --- | --- | --- | --- | --- |")
        for s in SYS:
            if s not in h:
                continue
            t = h[s]["trials"]
            body.append(
                f"| {NAMES[s]} | {mmm([x['handover_s'] for x in t], 1000)} | "
                f"{mmm([x['blocked_s'] for x in t], 1000)} | "
                f"{mmm([x['normal_latency_s'] for x in t], 1000, '{:.1f}')} | "
                f"{sum(x['failed_writes'] for x in t)} | {len(t)} ({h[s]['failed']}) |"
            )
        body.append("")
        for sy in SYS:
            errs: dict[str, int] = {}
            for x in h.get(sy, {}).get("trials", []):
                for k, v in (x.get("errors") or {}).items():
                    errs[k] = errs.get(k, 0) + v
            if errs:
                body.append(
                    f"- {NAMES[sy]}'s failed writes answered: "
                    + "; ".join(f"`{k.strip()}` ×{v}" for k, v in errs.items())
                )
        body.append("")
        body.append("![join and hand-over](bench-ops.png)\n")
    else:
        body.append("Not measured in this run.\n")

    n_idle = idle_members(res)
    body.append(f"## Idle cost at {n_idle} members\n")
    idle = res.get("idle")
    idf: dict = {}
    if idle:
        ia = section_args(res, "idle")
        body.append(
            f"{n_idle} members of each system side by side, after {ia.get('settle')} s of "
            f"settling; {ia.get('idle_windows')} windows of {ia.get('idle_seconds')} s. "
            "CPU = user+system time of the member's process over the window (the kernel's "
            "per-process CPU clock, in ns), % of one core; RSS and PSS from /proc "
            "(psutil).\n"
        )
        body.append(
            "| system | CPU leader % | CPU follower % (median) | RSS MiB (median member) | "
            f"RSS MiB (max) | PSS MiB | all {n_idle} members, CPU % |"
        )
        body.append("| --- | --- | --- | --- | --- | --- | --- |")
        for s in SYS:
            w = idle[s]["windows"]
            idf[s] = {
                "cpu_leader": med([x["cpu_leader"] for x in w]),
                "cpu_follower": med([x["cpu_follower_median"] for x in w]),
                "rss": med([x["rss_median"] for x in w]),
            }
            body.append(
                f"| {NAMES[s]} | {mmm([x['cpu_leader'] for x in w], fmt='{:.2f}')} | "
                f"{mmm([x['cpu_follower_median'] for x in w], fmt='{:.2f}')} | "
                f"{mmm([x['rss_median'] for x in w], fmt='{:.1f}')} | "
                f"{mmm([x['rss_max'] for x in w], fmt='{:.1f}')} | "
                f"{mmm([x['pss_median'] for x in w if x.get('pss_median')], fmt='{:.1f}')} | "
                f"{mmm([x['cpu_total'] for x in w], fmt='{:.1f}')} |"
            )
        body.append("")
        bd = {sy: (idle[sy].get("rss_breakdown") or {}).get("follower") or {} for sy in SYS}
        if any(bd.values()):
            cats = []
            for sy in SYS:
                for c in bd[sy]:
                    if c not in cats:
                        cats.append(c)
            body.append(
                "Where a follower's resident memory is (MiB, from `/proc/PID/smaps` at the end "
                "of the last window):\n"
            )
            body.append("| mapping | " + " | ".join(NAMES[sy] for sy in SYS) + " |")
            body.append("| --- |" + " --- |" * len(SYS))
            for c in cats:
                body.append(
                    f"| {c} | " + " | ".join(f"{bd[sy].get(c, 0):.1f}" for sy in SYS) + " |"
                )
            body.append(
                "| **total** | "
                + " | ".join(f"**{sum(bd[sy].values()):.1f}**" for sy in SYS)
                + " |"
            )
            body.append("")
        body.append("![idle](bench-idle.png)\n")
    else:
        body.append("Not measured in this run.\n")

    body.append("## Profile of a hafleet agent\n")
    prof = res.get("profile")
    if prof:
        body.append(
            "py-spy (`py-spy record --rate 200 --format raw --nonblocking`) on the leader of a "
            "3-member hafleet cluster, at idle and under 16-client writes. Share of samples "
            "(all threads, idle included where a thread waits in `select`/`epoll`); raw "
            "stacks in `bench/results/profile-*.txt` after a run.\n"
        )
        for key, title in (
            ("writes16_leader", "leader under 16-client writes"),
            ("idle_leader", "leader at idle"),
        ):
            p = prof.get(key) or {}
            if not p.get("samples"):
                continue
            extra = ""
            if p.get("load"):
                extra = f" ({p['load']['per_s']:.0f} writes/s while profiled)"
            body.append(f"**{title}**{extra}, {p['samples']} samples:\n")
            if p.get("area"):
                body.append(
                    "By area (the deepest agent module on the stack; fsync and epoll "
                    "waits apart): "
                    + ", ".join(f"{a} {v:.1f}%" for a, v in p["area"] if v >= 0.5)
                    + "\n"
                )
            body.append("| on-CPU leaf (self) | % | anywhere on the stack (inclusive) | % |")
            body.append("| --- | --- | --- | --- |")
            selfs, incl = p.get("self", []), p.get("inclusive", [])
            for i in range(max(len(selfs), len(incl))):
                a = selfs[i] if i < len(selfs) else ("", None)
                b = incl[i] if i < len(incl) else ("", None)
                body.append(
                    f"| `{a[0]}` | {'' if a[1] is None else f'{a[1]:.1f}'} | `{b[0]}` | "
                    f"{'' if b[1] is None else f'{b[1]:.1f}'} |"
                )
            body.append("")
    else:
        body.append("Not measured in this run.\n")

    body.append("## The cost of TLS\n")
    tls = res.get("tls")
    if tls and tls.get("summary"):
        import agent_bench  # bench/ is on sys.path (compare.py, report.py's main)

        body.append(
            "hafleet alone, a plain cluster beside a TLS one (`hafleet-agent ca`, "
            "`--tls-ca-file/--tls-cert-file/--tls-key-file`: mutual TLS between the agents, "
            "the HTTPS API) in the same run (`agent_bench.tls_cost`, section `tls`): both "
            "clusters up at once, the load and the kills alternating between them with the "
            "order rotated every round. Writes as in *Commit throughput and latency* "
            "(3 members, 100-byte values, aiohttp keeping its connections); failover at 3 "
            "members, default timing.\n"
        )
        body.append(agent_bench.tls_markdown(tls) + "\n")
    else:
        body.append("Not measured in this run.\n")

    body.append("## hafleet and etcd, both with TLS\n")
    tls_section(res, body)

    body.append("## Scale through Ansible\n")
    sc = res.get("scale")
    if sc and sc.get("steps"):
        body.append(
            "`ansible-playbook playbooks/scale.yml -e nodes=N` (provider `lab`) on a lab of "
            f"its own ({sc.get('subnet')}, bridge `hfbn0`, namespaces `hfbn-node*`, HAProxy "
            "on a free 127.0.0.1 port; `bench/scale_lab.py` with the collection tests' "
            "helpers). The load: `tests/agent/collection/loadgen.py` at "
            f"{sc.get('rate'):.0f} requests/s through HAProxy to the demo service on the "
            "nodes (every 10th request slow, 200 ms), started before the playbook and "
            "stopped when it ends; a request fails unless it answers 200 from a node. One "
            "run of each step (a step takes minutes): no min/max here.\n"
        )
        body.append("| step | playbook s | changed | rc | requests sent | failed | p99 ms |")
        body.append("| --- | --- | --- | --- | --- | --- | --- |")
        for st in sc["steps"]:
            ld = st.get("load") or {}
            body.append(
                f"| {st['step']} | {st['seconds']:.0f} | {st['changed']} | {st['rc']} | "
                f"{ld.get('sent', '–')} | {ld.get('failed', '–')} | "
                f"{(ld.get('latency_ms') or {}).get('p99', '–')} |"
            )
        if sc.get("cleanup_problems"):
            body.append("\nCleanup: " + "; ".join(sc["cleanup_problems"]))
        body.append("")
    elif sc and sc.get("skipped"):
        body.append(f"Not measured: {sc['skipped']}.\n")
    elif sc:
        body.append(f"The scale run failed (rc {sc.get('rc')}):\n")
        body.append("```\n" + str(sc.get("log_tail", ""))[-2000:] + "\n```\n")
    else:
        body.append(
            "`make bench`'s own scale step (`bench/scale_lab.py`: scale.yml on a lab of its "
            "own) was not in this run: `playbooks/scale.yml` landed while it was going. Alone: "
            "`bench/.venv/bin/python bench/compare.py --merge --only scale` (root). The same "
            "steps, from `make lab` in a fresh clone, follow. `make bench-balancer` measures "
            "failed requests during agent-driven scale-out/in and failover without Ansible.\n"
        )

    mk = res.get("make_lab")
    if mk and mk.get("steps"):
        st = mk["steps"]
        body.append(
            "### `make lab NODES=7` as a new user runs it (`make bench-scale`)\n\n"
            f"`bench/scale_bench.py` on commit {mk.get('commit')}: a fresh clone, "
            f"{'no `.venv` and no lab' if mk.get('fresh_venv') else 'an existing `.venv`'} "
            "at the start (the pip downloads are part of the first step), the default lab "
            "(`hafleet0`, 10.77.0.0/24, HAProxy on 127.0.0.1:8080). Steps in order; the load "
            f"runs at {mk.get('rate', 0):.0f} requests/s through HAProxy during the two scale "
            "steps (every 10th request asks for a 300 ms answer, hence p99). Load average "
            "(1/5/15 min) at the start "
            f"{mk.get('load_average_at_start')}, at the end {mk.get('load_average_at_end')}. "
            "One run of each step.\n"
        )
        targets = mk.get("targets") or {}
        body.append(
            "| step | seconds | CPU s | target | changed | requests through HAProxy | failed "
            "| p99 ms |"
        )
        body.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, step in st.items():
            ld = step.get("load") or {}
            target = targets.get(name)
            verdict = "–" if target is None else f"≤ {target} s ({ok(step['seconds'] <= target)})"
            cpu = step.get("cpu_seconds")
            body.append(
                f"| {name} | {step['seconds']:.0f} | {'–' if cpu is None else f'{cpu:.0f}'} | "
                f"{verdict} | {step['changed']} | "
                f"{ld.get('sent', '–')} | {ld.get('failed', '–')} | "
                f"{(ld.get('latency_ms') or {}).get('p99', '–')} |"
            )
        first = st.get("make lab NODES=7") or st.get("make lab NODES=7, from nothing", {})
        check = st.get("7 to 5, --check --diff", {})
        destroy = st.get("destroy", {})
        body.append(
            f"\nAfter `make lab`: 200 requests through HAProxy reached "
            f"{len(first.get('nodes_reached', []))} distinct nodes, and the status table was "
            f"printed ({'yes' if first.get('status_table') else 'no'}). `--check --diff` with "
            f"nodes=5 reported {check.get('changed', '–')} tasks that would change and "
            f"{check.get('diff_lines', '–')} diff lines; afterwards HAProxy still reached "
            f"{len(check.get('nodes_reached_after', []))} nodes and the next run reported "
            f"`changed={st.get('7 to 7 (no change)', {}).get('changed', '–')}`. "
            f"`destroy.yml` left nothing behind: {destroy.get('clean')}.\n"
        )

    # --- summary of targets
    S: list[str] = []
    S.append("## Targets\n")
    S.append("| target | measured in this run | verdict |")
    S.append("| --- | --- | --- |")
    for n in (3, 5, 7):
        d = fo.get(f"defaults/{n}")
        if d:
            r = d["etcd"] / d["hafleet"] if d["hafleet"] else float("nan")
            S.append(
                f"| failover ≥ 2× faster than etcd's defaults at equal safety, {n} members | "
                f"hafleet {d['hafleet'] * 1000:.0f} ms, etcd {d['etcd'] * 1000:.0f} ms: "
                f"{r:.2f}× faster | {ok(r >= 2)} |"
            )
    for n in (3, 5, 7):
        t = fo.get(f"tuned/{n}")
        if t:
            r = t["hafleet"] / t["etcd"] if t["etcd"] else float("nan")
            S.append(
                f"| failover within 1.2× of etcd at the same timeouts, {n} members | "
                f"hafleet {t['hafleet'] * 1000:.0f} ms, etcd {t['etcd'] * 1000:.0f} ms: "
                f"{r:.2f}× | {ok(r <= 1.2)} |"
            )
    for c in ("1", "16"):
        h = wf.get(("hafleet", c))
        ps = [(k, v) for (k, cc), v in wf.items() if k.startswith("pysyncobj") and cc == c]
        ps = [(k, v) for k, v in ps if k != "pysyncobj-nofsync"]
        if h and ps:
            best = max(ps, key=lambda kv: kv[1])
            S.append(
                f"| commit throughput above PySyncObj's, {c} client{'s' if c != '1' else ''} | "
                f"hafleet {h:.0f}/s, best PySyncObj with fsync ({NAMES[best[0]]}) "
                f"{best[1]:.0f}/s: {h / best[1]:.2f}× | {ok(h > best[1])} |"
            )
    S.extend(issue17_targets(res, wf, jf, res.get("handover"), idf))
    S.append("")

    L.extend(S)
    if kept:
        L.append(kept + "\n")
    else:
        L.append(BEGIN + "\n\n(no analysis written yet)\n\n" + END + "\n")
    L.extend(body)

    L.append((sections or SECTIONS_BEGIN + "\n" + SECTIONS_END) + "\n")

    # --- machine, versions, commands
    L.append("## Machine, versions, commands\n")
    fs = m.get("fsync_100b") or {}
    fs_txt = "; ".join(
        f"{k.replace('_', ' + ')} {v['p50_ms']:.2f} ms p50, {v['p99_ms']:.2f} ms p99"
        for k, v in fs.items()
        if isinstance(v, dict)
    )
    loads = [v for _, v in res.get("load_samples", [])]
    L.append(
        f"- {m.get('nproc')} CPUs ({m.get('cpu_model')}), {m.get('mem_total_gib')} GiB, "
        f"kernel {m.get('kernel')}, {m.get('os')}, Python {m.get('python')}\n"
        f"- data dirs on {m.get('filesystem')}; 100-byte writes there: {fs_txt}\n"
        f"- load average (1 min) before the run {res.get('load_before', [math.nan])[0]:.2f}, "
        f"during it {mmm(loads, fmt='{:.2f}')} (every 5 s), after "
        f"{res.get('load_after', [math.nan])[0]:.2f} — other work shares this machine\n"
        "- phase durations (s): "
        + ", ".join(f"{k} {v}" for k, v in res.get("durations_s", {}).items())
        + "\n"
    )
    L.append("| component | version |")
    L.append("| --- | --- |")
    for k, v in (m.get("versions") or {}).items():
        if isinstance(v, list):
            v = v[0] if v else ""
        L.append(f"| {k} | {v} |")
    L.append("")
    L.append(
        "How each system runs (the first member's command line; `$TMP` is the run's "
        "temporary directory, N the cluster's 127.0.N.x network):\n"
    )
    seen = set()
    argvs = dict(res.get("argv") or {})
    for key, r in (res.get("failover") or {}).items():
        for s in SYS:
            if r.get("argv", {}).get(s):
                argvs.setdefault(f"{s} ({key.split('/')[0]} timing, failover)", r["argv"][s])
    L.append("```")
    for k, argv in argvs.items():
        c = _cmd(argv, wd)
        if c in seen:
            continue
        seen.add(c)
        L.append(f"# {NAMES.get(k, k)}")
        L.append(c)
    L.append("```\n")
    L.append(
        "Commands: `make bench` (installs etcd-server/etcd-client with apt-get and "
        "bench/.venv with pysyncobj, matplotlib and py-spy pinned in bench/constraints.txt, "
        "then runs `bench/.venv/bin/python bench/compare.py`), `make bench BENCH_QUICK=1` "
        f"(`--quick`). This run: `bench/compare.py {_args_text(args)}`.\n"
    )
    return "\n".join(L) + "\n"


def _pct(xs: list[float], q: float) -> float:
    """The q-th quantile (0..1) of ``xs``, nearest rank (the max for a few trials)."""
    ys = sorted(x for x in xs if x is not None)
    if not ys:
        return math.nan
    return ys[min(len(ys) - 1, max(0, math.ceil(q * len(ys)) - 1))]


_ALONE = {
    True: " During a system's turn the other systems' clusters are paused (SIGSTOP): their "
    "idle timers take nothing from the two cores; each turn waits for a steady leader first "
    "(a resumed cluster keeps its leader and term).",
    False: " The other systems' clusters idle meanwhile (a run before they were paused).",
}


def tls_section(res: dict, body: list[str]) -> None:
    """Section ``tls-etcd``: the writes and the idle windows with TLS on for both systems."""
    te = res.get("tls_etcd")
    if not te or not te.get("writes"):
        body.append("Not measured in this run.\n")
        return
    a = section_args(res, "tls-etcd")
    body.append(
        "Both systems with TLS (section `tls-etcd`, `bench/compare.py`'s `bench_tls_etcd`): "
        "mutual TLS between the members, HTTPS between the client and the leader, a "
        "certificate per member from a CA of each cluster's own (`hafleet-agent ca`; etcd with "
        "`--cert-file/--key-file` and `--peer-cert-file/--peer-key-file/"
        "--peer-trusted-ca-file --peer-client-cert-auth`). The writes as in *Commit "
        f"throughput and latency* ({a.get('tls_rounds')} rounds of {a.get('load_seconds')} s, "
        "each system alone in its turn, the order rotated every round); the idle windows as "
        f"in *Idle cost* ({a.get('idle_members')} members, {a.get('idle_windows')} windows of "
        f"{a.get('idle_seconds')} s, both clusters over the same seconds); failover as in "
        "*Leader failover* (kill -9 of the leader, both with the same heartbeat and election "
        "timeout, the kills alternating between the two).\n"
    )
    body.append("| figure | hafleet | etcd | hafleet ÷ etcd | round pairs hafleet ÷ etcd |")
    body.append("| --- | --- | --- | --- | --- |")
    w = te["writes"]
    for c in ("1", "16"):
        hs = [r["per_s"] for r in w.get("hafleet", {}).get(c, [])]
        es = [r["per_s"] for r in w.get("etcd", {}).get(c, [])]
        pairs = round_pairs(res, c, w)
        pair_text = (
            f"{min(pairs):.2f}-{max(pairs):.2f}, median {statistics.median(pairs):.2f}"
            if pairs
            else "–"
        )
        body.append(
            f"| committed writes/s, {c} client{'s' if c != '1' else ''} | {mmm(hs)} | "
            f"{mmm(es)} | {ratio(med(hs), med(es))} | {pair_text} |"
        )
    idle = te.get("idle") or {}
    if idle.get("hafleet") and idle.get("etcd"):
        n = idle["hafleet"].get("members")
        for label, key, fmt in (
            (f"idle leader CPU, {n} members (%)", "cpu_leader", "{:.2f}"),
            ("idle follower CPU, median (%)", "cpu_follower_median", "{:.2f}"),
            ("idle RSS per member, median (MiB)", "rss_median", "{:.1f}"),
        ):
            hv = [x[key] for x in idle["hafleet"]["windows"]]
            ev = [x[key] for x in idle["etcd"]["windows"]]
            body.append(
                f"| {label} | {mmm(hv, fmt=fmt)} | {mmm(ev, fmt=fmt)} | "
                f"{ratio(med(hv), med(ev))} | |"
            )
    fo = te.get("failover") or {}
    if fo.get("hafleet", {}).get("leader_s") and fo.get("etcd", {}).get("leader_s"):
        t = fo.get("timing") or {}
        hv, ev = fo["hafleet"]["leader_s"], fo["etcd"]["leader_s"]
        body.append(
            f"| failover after kill -9, {t.get('heartbeat_ms')}/{t.get('election_ms')} ms for "
            f"both, {a.get('idle_members')} members: median (ms) | {mmm(hv, 1000)} | "
            f"{mmm(ev, 1000)} | {ratio(med(hv), med(ev))} | |"
        )
        failed = fo["hafleet"].get("failed", 0) + fo["etcd"].get("failed", 0)
        if failed:
            body.append(f"| failover trials that failed | {fo['hafleet'].get('failed', 0)} | "
                        f"{fo['etcd'].get('failed', 0)} | | |")  # fmt: skip
    body.append("")


def round_pairs(res: dict, c: str, block: dict | None = None) -> list[float]:
    """hafleet's writes/s over etcd's, round by round (the two ran minutes apart at most,
    in one rotation), for ``c`` clients; empty when the rounds do not pair up. ``block``:
    another section's writes (``tls-etcd``'s) instead of the writes section's."""
    block = block if block is not None else res.get("writes") or {}
    hs = [r["per_s"] for r in (block.get("hafleet") or {}).get(c, [])]
    es = [r["per_s"] for r in (block.get("etcd") or {}).get(c, [])]
    if len(hs) != len(es) or len(hs) < 2:
        return []
    return [h / e for h, e in zip(hs, es, strict=True) if e > 0]


def issue17_targets(res: dict, wf: dict, jf: dict, h: dict | None, idf: dict) -> list[str]:
    """The rows of issue 17's acceptance (the fast data path): writes, idle cost, failover,
    hand-over and join against etcd, from this run's figures."""
    S: list[str] = []
    for c in ("1", "16"):
        hv, ev = wf.get(("hafleet", c)), wf.get(("etcd", c))
        if hv and ev:
            pairs = round_pairs(res, c)
            pm = med(pairs) if pairs else hv / ev
            spread = (
                f"; round pairs {min(pairs):.2f}-{max(pairs):.2f}×, median {pm:.2f}×"
                if pairs
                else ""
            )
            S.append(
                f"| committed writes ≥ 1.0× etcd's, {c} client{'s' if c != '1' else ''} "
                f"(3 members) | hafleet {hv:.0f}/s, etcd {ev:.0f}/s: {hv / ev:.2f}×{spread} | "
                f"{ok(hv >= ev and pm >= 1.0)} |"
            )
    if idf:
        hi, ei = idf["hafleet"], idf["etcd"]
        n = idle_members(res)
        S.append(
            f"| idle RSS per member ≤ etcd's ({n} members) | hafleet {hi['rss']:.1f} MiB, etcd "
            f"{ei['rss']:.1f} MiB: {hi['rss'] / ei['rss']:.2f}× | {ok(hi['rss'] <= ei['rss'])} |"
        )
        for role in ("leader", "follower"):
            k = f"cpu_{role}"
            S.append(
                f"| idle CPU ≤ etcd's, {role} ({n} members) | hafleet {hi[k]:.2f}%, etcd "
                f"{ei[k]:.2f}%: {ratio(hi[k], ei[k])}× | {ok(hi[k] <= ei[k])} |"
            )
    fo = res.get("failover") or {}
    for key in sorted(fo):
        prof, n = key.split("/")
        r = fo[key]
        hl = r.get("hafleet", {}).get("leader_s") or []
        if prof == "tuned" and n == "5":
            hm, em = med(hl), med(r.get("etcd", {}).get("leader_s") or [])
            t = r.get("timing") or {}
            S.append(
                f"| failover ≤ 1.0× etcd's median at the same timeouts "
                f"({t.get('heartbeat_ms')}/{t.get('election_ms')} ms, 5 members) | hafleet "
                f"{hm * 1000:.0f} ms, etcd {em * 1000:.0f} ms: {ratio(hm, em)}× | "
                f"{ok(hm <= em)} |"
            )
        if prof == "freeze" and n == "5":
            hm, em = med(hl), med(r.get("etcd", {}).get("leader_s") or [])
            S.append(
                f"| (not in the acceptance: the timers alone) failover after SIGSTOP of the "
                f"leader, same timeouts, 5 members | hafleet {hm * 1000:.0f} ms, etcd "
                f"{em * 1000:.0f} ms: {ratio(hm, em)}× | {ok(hm <= em)} |"
            )
        if prof == "defaults" and hl:
            m, p99 = med(hl), _pct(hl, 0.99)
            S.append(
                f"| failover at the defaults: median ≤ 0.3 s, p99 ≤ 0.6 s ({n} members, "
                f"{len(hl)} trials) | median {m:.3f} s, p99 {p99:.3f} s | "
                f"{ok(m <= 0.3 and p99 <= 0.6)} |"
            )
    if h and "hafleet" in h and h["hafleet"].get("trials"):
        b = med([x["blocked_s"] for x in h["hafleet"]["trials"]])
        S.append(
            f"| graceful hand-over blocks writes ≤ 50 ms (3 members) | {b * 1000:.0f} ms "
            f"(it includes one normal write) | {ok(b <= 0.05)} |"
        )
    if jf.get("hafleet") is not None and jf["hafleet"] == jf["hafleet"]:
        S.append(
            f"| a new host is a voter ≤ 2 s after it starts | {jf['hafleet']:.2f} s | "
            f"{ok(jf['hafleet'] <= 2.0)} |"
        )
    return S


_SHOWN_ARGS = ("quick", "only", "trials", "sizes", "tuned", "rounds", "write_rounds")


def _args_text(args: dict) -> str:
    return " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
        for k, v in args.items()
        if v not in (None, False) and k in _SHOWN_ARGS
    )


def main() -> int:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else BENCH / "results" / "compare.json"
    docs = Path(sys.argv[2]) if len(sys.argv) > 2 else BENCH.parent / "docs"
    write(json.loads(src.read_text()), docs)
    print(f"wrote {docs / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
