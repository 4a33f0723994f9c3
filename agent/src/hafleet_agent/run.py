"""The composition root of ``hafleet-agent run``: read the secrets, make the node and its
HTTP API (``serve_api``), serve until SIGTERM/SIGINT or until the node is removed from the
group, stop within a bound, and fail-stop (leave at once) when the stop does not finish or
the node failed. Logging is set up here too. The node itself (``node.node.Node``) knows
nothing of signals, of the process or of the HTTP server; outside node/ and server/ this
is the one module that imports both (test_layering checks)."""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from .config import AgentConfig, ConfigError, read_secret
from .logfmt import TEXT_FORMAT, IsoFormatter, JsonFormatter
from .node.meta import META_FILE, load_cluster_id
from .node.node import Node, Serve
from .node.tasks import FAIL_STOP_S, exit_later
from .node.walwriter import batch_policy
from .sdnotify import Notifier
from .server import book_all, start_api
from .server.audit import load_read_token
from .wal import StorageError

log = logging.getLogger("hafleet.agent")


def setup_logging(fmt: str, level: int = logging.INFO) -> None:
    """Log to stderr: ``text`` or ``json`` lines, ISO 8601 UTC times (logfmt.py)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(IsoFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Neither format shows the process or the thread: a record need not look them up (a
    # getpid system call and two lookups each, on every line).
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False


def serve_api(node: Node) -> Serve:
    """What ``node.start(serve=...)`` awaits: the HTTP API of ``node``, started once the
    node's transport listens and before it founds or joins; ``node.stop`` closes it."""

    async def serve() -> Callable[[], Awaitable[None]]:
        runner = await start_api(node)
        return runner.cleanup

    return serve


def log_tls(cfg: AgentConfig) -> None:
    """Say at start whether the agent's traffic is encrypted (one line); load the TLS files
    (ConfigError when they cannot be used)."""
    tls = cfg.tls
    if tls is None:
        log.warning(
            "TLS is off: Raft traffic and the API are not encrypted (Raft is authenticated by "
            "the cluster key, the API by its token); give --tls-ca-file, --tls-cert-file and "
            "--tls-key-file for mutual TLS between agents and HTTPS"
        )
        return
    log.info(
        "TLS is on: mutual TLS on the Raft port, HTTPS on the API; certificate %s (node %s), CA %s",
        tls.cert_file,
        tls.node_id,
        tls.ca_file,
    )
    if not tls.covers_host(cfg.advertise_host):
        log.warning(
            "TLS certificate %s does not name this node's address %s: peers and clients "
            "that dial it will refuse it (issue it with --address %s)",
            tls.cert_file,
            cfg.advertise_host,
            cfg.advertise_host,
        )


def cpu_policy(policy: str) -> str:
    """Put the calling thread (the agent's main thread, before it starts any other: they
    inherit it) under ``SCHED_BATCH`` when ``policy`` is ``batch`` (node/walwriter.py's
    ``batch_policy``: only from the default policy); what was done, for the log.
    ``SCHED_BATCH`` keeps the thread's share of the CPU and its nice value; only a wake-up of
    it no longer preempts the process that runs, which goes on until it sleeps or its time
    slice ends (a few ms at most). A leader's appends thus all leave before a peer it woke on
    the same host runs, and the agent does not cut into the host's own work at each
    heartbeat (docs/agent.md, "CPU scheduling")."""
    if policy != "batch":
        return "left as it was started (cpu_scheduling_policy other)"
    return batch_policy()


def check_data_dir(cfg: AgentConfig) -> None:
    """ConfigError (exit 2, which neither systemd nor supervise.py restarts) when the data
    dir cannot be this node's whatever is tried again: it, or the first of its parents that
    exists, is not a directory; or it holds another node's or another cluster's state
    (``agent.json``). An agent.json that cannot be read is left to the node (a storage
    error, exit 1)."""
    path = Path(cfg.data_dir)
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if os.path.exists(probe) and not probe.is_dir():
        where = "" if probe == path else f" ({probe} is not one)"
        raise ConfigError(f"data_dir {path} is not a directory{where}: give another --data-dir")
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return
    if isinstance(meta, dict) and (meta.get("node_id"), meta.get("cluster")) != (
        cfg.node_id,
        cfg.cluster,
    ):
        try:
            load_cluster_id(path, cfg.node_id, cfg.cluster)
        except StorageError as exc:  # its words: whose it is, and what to do
            raise ConfigError(str(exc)) from None


async def run_agent(cfg: AgentConfig) -> int:
    """The body of ``hafleet-agent run``: start, serve until SIGTERM/SIGINT (hand leadership
    over first) or until removed from the group, stop."""
    check_data_dir(cfg)
    key = read_secret(cfg.key_file, "key")
    token = read_secret(cfg.token_file, "token")
    # Checked here, before anything listens (the API reads it again when it starts).
    load_read_token(cfg, token)
    log_tls(cfg)
    log.info("CPU scheduling: %s", cpu_policy(cfg.cpu_scheduling_policy))
    agent = Node(cfg, key, token)
    loop = asyncio.get_running_loop()
    stop_signal = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_signal.set)
    # `kill -USR1 PID` writes every thread's stack to the log (stderr), even when the event
    # loop is blocked: what a stuck agent is doing, without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    # Under systemd (Type=notify): ready once the API serves; the start job waits for it.
    notifier = Notifier.from_env()
    try:
        await agent.start(serve=serve_api(agent))
    except (StorageError, OSError) as exc:
        log.critical("cannot start: %s", exc)
        await agent.stop(handover=False)
        return 1
    if not agent.stopping:  # (a storage failure while it started: never "ready", then gone)
        notifier.ready(f"node {cfg.node_id} of {cfg.cluster}: the API serves on {cfg.api_addr}")
    waiters = [
        asyncio.create_task(stop_signal.wait()),
        asyncio.create_task(agent.wait_stopped()),
        asyncio.create_task(_wait_removed(agent)),
    ]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    if stop_signal.is_set():
        log.info("signal received: handing over and stopping")
    notifier.stopping(
        "stopping: "
        + ("a signal" if stop_signal.is_set() else "removed" if agent.removed else "the node ended")
    )
    failed = agent.exit_code != 0
    bound = FAIL_STOP_S if failed else STOP_S
    # The bound below lives on the event loop; should the loop itself not come back (a call
    # that blocks it), this thread still ends the process, its stacks written first.
    backstop = exit_later(bound + BACKSTOP_GRACE_S, "a stop was asked")
    stopped = await stop_within(agent, agent.exit_code == 0 and not agent.removed, bound)
    backstop.cancel()
    if failed or not stopped:
        # Fail-stop: nothing of this process may linger (a storage failure, or a stop that
        # did not finish: the reason and what still ran are logged). Leave at once, without
        # the event loop's teardown, which waits for whatever still runs.
        book_all()  # the API's last audit lines (its cleanup did not run)
        logging.shutdown()
        os._exit(agent.exit_code or 1)
    STOPPED.append(agent.exit_code)
    return agent.exit_code


#: The exit code of a stop that finished (cli.py): a second Ctrl-C during the event loop's
#: teardown, once the loop's own signal handlers are gone, raises KeyboardInterrupt there;
#: the stop it interrupts was done, so it is no 130.
STOPPED: list[int] = []


#: Bound on a graceful stop: hand-over (2 election timeouts) and the API's 5 s grace included.
STOP_S = 20.0
#: After the bound, how long the event loop has to act on it before a thread ends the process.
BACKSTOP_GRACE_S = 5.0


def _running_tasks() -> str:
    """The other tasks still running, each with the line it waits on (for a stuck stop)."""
    out = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        frames = task.get_stack(limit=1)
        where = (
            f"{frames[0].f_code.co_filename.rsplit('/', 1)[-1]}:{frames[0].f_lineno} "
            f"in {frames[0].f_code.co_name}"
            if frames
            else "not started"
        )
        out.append(f"{task.get_name()} ({where})")
    return "; ".join(sorted(out)) or "none"


async def stop_within(agent: Node, handover: bool, bound: float) -> bool:
    """``agent.stop(handover)``, given at most ``bound`` seconds; False (logged, with the
    tasks still running) when it did not finish in time."""
    try:
        async with asyncio.timeout(bound):
            await agent.stop(handover=handover)
        return True
    except TimeoutError:
        log.critical(
            "stopping took longer than %.1fs; leaving now. Still running: %s",
            bound,
            _running_tasks(),
        )
        return False


async def _wait_removed(agent: Node) -> None:
    """Return once this node's removal is the last word on it: removed, and nothing newer
    applied for two election timeouts (a removed node gets no more entries; one that was
    added again and is catching up gets the rest of its log well within that, and its
    re-add clears the flag). The wait also lets the removal's commit reach the others."""
    settle = max(2 * agent.cfg.election_timeout_ms / 1000, 4 * agent.cfg.heartbeat_ms / 1000)
    # Once the node stops, wait_index answers at once without yielding: looping on it then
    # would hold the event loop forever (the stop itself could never run).
    while not agent.stopping:
        index = agent.state.index
        # (The flag first: a status is built only once the node saw its removal, not at every
        # write the node applies.)
        if (
            agent.removed
            and agent.raw is not None
            and not agent.raw.basic_status().in_config(agent.id)
        ):
            if await agent.wait_index(index, settle) == index and agent.removed:
                return
        elif agent.removed:
            await agent.wait_index(index, 1.0)  # the core applies the removal with its batch
        else:
            # Woken by the removal only, not by every write the node applies.
            await agent.wait_removed(1.0)
