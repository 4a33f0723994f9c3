"""The Raft driver: the core (``RawNode``), its write-ahead log (``DiskStorage``) and the
replicated state machine, driven by one task.

The event loop owns everything but a leader's log syncs: node/walwriter.py writes each of a
leader's batches on the loop and has the kernel ``fdatasync`` it through Linux AIO (or its
writer thread, ``raft-wal``, writes and syncs it: fsync releases the GIL), and the compaction's
worker encodes and writes snapshots. A follower writes its batches on the loop (walwriter.py's
``write_inline``, its answers queued while the device takes the data). The core is driven by
``_pump`` (from the Raft task ``raft_loop``, the ticker, and the writer's completion), which
turns the inputs fed so far into a ready batch, handled in ``raft/ready.py``'s one order: send
what may go before the batch is durable (a leader's appends and heartbeats: ``begin_ready``),
hand its entries and hard state to the writer (walwriter.py); once they are durable
(``_written``, back on the loop) send the rest (append and vote answers), apply its committed
entries to the state machine (which answers the clients), advance the core (a leader counts
itself toward the commit quorum only now), serve the reads now due, compact the log when due,
and wake whoever waits for the state. While a batch is being written the loop goes on: inputs
(ticks, messages, proposals, reads) are fed to the core from callbacks as they come, and
everything they produce goes into the next batch, written with one write and one fsync once
this one is durable (group commit). One batch is in the writer at a time; snapshots (a
leader's, a compaction's) go in force between two batches, never during one.

It sees the rest of the node through what is passed in: a send callable, the state machine,
the config, the cluster id, the stop event and a few hooks (spawn, fail-stop, a leader's
snapshot to save, a configuration change applied, a snapshot being sent in chunks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ..config import AgentConfig
from ..ids import shown
from ..raft.coalesce import coalesce
from ..raft.core import Config as RaftConfig
from ..raft.core import ProposalDropped
from ..raft.rawnode import RawNode, Ready
from ..raft.ready import ANSWER_TYPES, ReadyEffects, begin_ready, finish_ready
from ..raft.status import BasicStatus
from ..raft.types import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    Message,
    Snapshot,
    SoftState,
    StateType,
)
from ..state import StateMachine, conf_change_error
from ..telemetry import TELEMETRY
from ..wal import PREALLOC_BYTES, DiskStorage, PreparedBatch, StorageError
from .compaction import Compaction
from .errors import NoLeader, StateErrorResult, Unknown
from .meta import META_FILE
from .proposals import Deadlines, OnApplied, Proposals, wait_answer
from .proposals import Pending as _Pending
from .reads import Reads
from .ticker import Ticker
from .walwriter import WalWriter, write_inline

log = logging.getLogger("hafleet.agent")


class Driver:
    def __init__(
        self,
        node_id: str,
        cfg: AgentConfig,
        state: StateMachine,
        rng: random.Random,
        *,
        stopping: asyncio.Event,
        cluster_id: Callable[[], str | None],
        send: Callable[[Message], None],
        save_snapshot: Callable[[Snapshot], None],
        on_conf_change: Callable[[ConfChange], None],
        sending_snapshot: Callable[[], bool],
        spawn: Callable[..., None],
        fail: Callable[[str], None],
        send_ahead: Callable[[list[Message]], Callable[[], None]],
        on_lead: Callable[[], None] = lambda: None,
        flush: Callable[[], None] | None = None,
    ) -> None:
        """``send_ahead``: queue a follower's answers before its write is durable, for the
        next flush (returns what takes them back); ``on_lead``: this node just became the
        leader; ``flush``: write the messages sent so far now (a leader's appends before
        its log write: raft/ready.py);
        ``save_snapshot``: make a snapshot from the leader durable (before it is applied);
        ``on_conf_change``: a configuration change applied while the node runs (not one of
        the log replayed at start); ``sending_snapshot``: a member catches up through a
        chunked snapshot (compaction waits a while)."""
        self.id = node_id
        self.cfg = cfg
        self.state = state
        self.rng = rng
        self._stop = stopping
        self._on_lead = on_lead
        self._cluster_id = cluster_id
        self._save_snapshot = save_snapshot
        self._on_conf_change = on_conf_change
        self._fail = fail
        self.storage: DiskStorage | None = None
        self.raw: RawNode | None = None
        self._wake = asyncio.Event()
        self.clock = Ticker(
            cfg.tick_ms / 1000,
            raw=lambda: self.raw,
            counting=lambda: self._cluster_id() is not None,
            pump=self._pump,
            stopping=stopping,
        )
        self._pump_handle: asyncio.Handle | None = None  # the pump wake() scheduled
        self._index_event = asyncio.Event()  # replaced by a fresh one at every change
        self.pending: dict[int, _Pending] = {}
        self._proposals = Proposals()  # writes for the next pump (node/proposals.py)
        self._deadlines = Deadlines()  # the writes' time limits, on one timer
        self.reads = Reads()  # linearizable reads waiting (node/reads.py)
        self._startup_commit = 0
        self.removed = False
        self.removed_flag = asyncio.Event()  # set while ``removed`` (run.py's removal watch)
        self.leader_since: float | None = None
        self.last_leader: str | None = None
        self._compaction = Compaction(  # put in force by the pump between two batches
            cfg,
            state,
            spawn=spawn,
            fail=fail,
            wake=self._wake.set,
            sending_snapshot=sending_snapshot,
        )
        self._writer: WalWriter | None = None  # the one thread writing the log
        self._writing = False  # a ready batch is in the writer thread, not durable yet
        self._unsaved_hs: HardState | None = None  # a new commit index not written yet
        self._answered = False  # a writer was answered by the applies of this batch
        self._max_entries = RaftConfig.max_entries_per_msg  # of a merged append (coalesce)
        self._effects = ReadyEffects(
            persist=self._persist,
            send=send,
            restore=self._restore,
            apply=self._apply,
            on_soft_state=self._on_soft_state,
            on_read_state=self.reads.confirmed,
            after_advance=self._after_advance,
            flush=flush,
            send_rest=self._send_rest,
        )
        self._send, self._send_ahead = send, send_ahead

    def open(self, data_dir: Path) -> bool:
        """Open the storage (recovering a torn log) and make the core from it; whether it
        held Raft state (a node with state never founds again; one whose cluster id is
        unknown does not start)."""
        self.storage = DiskStorage.open(data_dir, prealloc_bytes=PREALLOC_BYTES)
        self._writer = WalWriter()
        rep = self.storage.report
        if rep.truncated_bytes:
            log.warning(
                "recovered the Raft log: cut %d bytes at offset %s (%s)",
                rep.truncated_bytes,
                rep.truncated_at,
                rep.reason,
            )
        st = self.storage
        has_state = st.hard_state.term > 0 or bool(st.entries) or not st.snapshot.empty
        raft_cfg = RaftConfig(
            self.id,
            self.rng,
            election_tick=self.cfg.election_tick,
            heartbeat_tick=self.cfg.heartbeat_tick,
        )
        if st.snapshot.meta.index:
            self.state.restore(st.snapshot.data, st.snapshot.meta.index)
        self.raw = RawNode(
            raft_cfg,
            st.hard_state,
            st.snapshot,
            list(st.entries),
            on_event=self._core_event,
            check_conf_change=conf_change_error,  # the state machine's rule: both agree
        )
        self._startup_commit = st.hard_state.commit
        if has_state:
            if self._cluster_id() is None:
                raise StorageError(
                    f"{data_dir} holds Raft state but no {META_FILE}: refusing to start "
                    "a node whose cluster is unknown"
                )
            log.info(
                "restarting from %s: term %d, commit %d, %d entries after snapshot %d",
                data_dir,
                st.hard_state.term,
                st.hard_state.commit,
                len(st.entries),
                st.snapshot.meta.index,
            )
        else:
            log.info("fresh node %s of cluster %r", self.id, self.cfg.cluster)
        return has_state

    def wake(self) -> None:
        """New input for the core: drained once the loop is done with this cycle's other
        callbacks (the frames read with it), by a plain callback rather than a task wake-up
        (the Raft loop's, which a failure of the pump falls back to)."""
        if self._pump_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._wake.set()
            return
        self._pump_handle = loop.call_soon(self._pump_now)

    def pump_woken(self) -> None:
        """The frames of one read were all stepped (the transport's ``on_read``): pump now
        rather than in the loop's next cycle, when a step asked for one (``wake``). Frames
        of other connections read in this cycle make the next pump."""
        if self._pump_handle is None:
            return
        self._pump_handle.cancel()
        self._pump_now()

    def _pump_now(self) -> None:
        self._pump_handle = None
        try:
            if self._proposals.queued and self.raw is not None:
                self._proposals.feed(self.raw, self.pending)  # even while a batch is written
            self._pump()
        except Exception:
            self._wake.set()  # the Raft loop pumps again: a failure there is supervised
            raise

    def release_waiters(self) -> None:
        """The node stops: fail the waiting writes and reads, end the long polls now."""
        for p in self.pending.values():
            if not p.future.done():
                p.future.set_exception(Unknown("the agent is stopping"))
        self._proposals.fail(NoLeader("the agent is stopping; the write was not proposed"))
        self.reads.release()
        self._index_event.set()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown()  # a write under way ends before the log closes
            self._writer = None
        hs, self._unsaved_hs = self._unsaved_hs, None
        if self.storage is not None:
            # The commit index that only moved (not fsync'd, _drain_ready) goes to disk at a
            # stop: a member that applied its own removal restarted as a member (`leave`).
            with contextlib.suppress(StorageError, ValueError):
                if hs is not None:
                    self.storage.save(hs, [])
            self.storage.close()

    # ---- the Ready loop --------------------------------------------------------------------
    def _core_event(self, text: str) -> None:
        log.debug("raft: %s", text)

    async def ticker(self) -> None:
        """The core's clock (node/ticker.py: a timer for the tick that acts)."""
        await self.clock.run()

    async def raft_loop(self) -> None:
        while not self._stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            self._pump()

    def _pump(self) -> None:
        """Handle the core's ready batches up to the next one that needs a write (then the
        writer's completion goes on); wake whoever waits for the state to change."""
        if self._stop.is_set() or self._writing:
            self.clock.arm()
            return
        try:
            changed = self._drain_ready()
        except StorageError as exc:
            self._fail(f"storage failed, state could not be made durable: {exc}")
            return
        self._moved(changed)

    def _moved(self, changed: bool) -> None:
        self.clock.arm()  # the core may act sooner now (a new leader beats at once)
        if changed:
            event, self._index_event = self._index_event, asyncio.Event()
            event.set()

    def _drain_ready(self) -> bool:
        """Handle ready batches (raft/ready.py's order) until none is left or one is handed
        to the writer thread; whether the state machine moved."""
        raw, storage = self.raw, self.storage
        assert raw is not None and storage is not None
        if self._proposals.queued:
            self._proposals.feed(raw, self.pending)  # the writes queued so far, in one
        changed = False
        while not self._writing:
            if self._compaction.prepared is not None:
                self._compaction.install(raw, storage, self._stop.is_set())
            if not raw.has_ready():
                break
            rd = raw.ready()
            # fewer, larger messages: the batch's appends (answers) to a peer merged in one
            rd.messages = coalesce(rd.messages, self._max_entries)
            later = begin_ready(rd, self._effects, flush=False)  # flushed below
            if rd.snapshot is not None:
                self._save_snapshot(rd.snapshot)  # rare: on the loop, between two batches
            batch = None
            hs = rd.hard_state
            if not rd.must_fsync:
                # Only the commit index moved: no write and no fsync on the apply path
                # (etcd's MustSync); it is written with the next batch that is fsync'd. The
                # entries it covers are durable already, and a commit index lost in a crash
                # is learned again from the leader.
                if hs is not None:
                    self._unsaved_hs = hs
            else:
                hs = hs if hs is not None else self._unsaved_hs
                self._unsaved_hs = None
                if rd.entries or hs is not None:
                    batch = storage.prepare_save(hs, rd.entries)
            if batch is not None and not raw.is_leader:
                # A follower (or candidate) writes on the loop: nothing it would do meanwhile
                # helps its leader more than its answer, which waits for this write; the
                # hand-over to the writer thread and back (two wake-ups, ~0.2 ms here) would
                # be on every commit's path. Frames that come meanwhile wait in the socket
                # and make the next batch (the group commit of a follower).
                self._flush()  # what may go before the write (a heartbeat answer, a vote)
                # Its answers queued while the device takes the data, written once durable.
                answers = [m for m in later if m.type in ANSWER_TYPES]
                write_inline(storage, batch, partial(self._send_ahead, answers))
                storage.finish_save(batch)
                if answers:
                    later = [m for m in later if m.type not in ANSWER_TYPES]
                    self._flush()
                batch = None  # durable: the rest of the batch goes on below
            if batch is None:
                changed |= finish_ready(raw, rd, later, self._effects).changed
                if self._answer_first(raw):
                    break
                continue
            assert self._writer is not None
            self._writing = True
            # The appends leave while the leader's own write runs (its sync in the kernel
            # through Linux AIO, or the write and sync in the writer thread): its write and its
            # followers' run together. The writer says when they go (``send``).
            self._writer.write_batch(
                asyncio.get_running_loop(),
                storage,
                batch,
                partial(self._written, rd, later, batch),
                send=self._flush,
            )
        return changed

    def fail_stop(self, reason: str) -> None:  # it cannot go on safely: reason says why
        self._fail(reason)

    def _flush(self) -> None:
        if self._effects.flush is not None:
            self._effects.flush()

    def _answer_first(self, raw: RawNode) -> bool:
        """After a batch's applies: when they answered writers and the next batch has
        nothing to write, its work (the commit sent to the followers, after-advance chores)
        waits for the next callback, behind the writers' tasks (scheduled by the answers):
        they answer first. Whether the pump stops here."""
        if not self._answered:
            return False
        self._answered = False
        if raw.has_unstable() or self._proposals.queued:
            return False  # the next write goes to the writer thread first
        if raw.has_ready():
            self.wake()
        return True

    def _written(
        self, rd: Ready, later: list[Message], batch: PreparedBatch, exc: BaseException | None
    ) -> None:
        """``rd``'s batch is durable (on the loop): its answers, applies, advance; the next."""
        self._writing = False
        if self._stop.is_set():
            return  # stopping: nothing more is answered or applied
        if exc is not None:
            self._fail(f"storage failed, state could not be made durable: {exc}")
            return
        raw, storage = self.raw, self.storage
        assert raw is not None and storage is not None
        try:
            storage.finish_save(batch)
            changed = finish_ready(raw, rd, later, self._effects).changed
            if not self._answer_first(raw):
                changed |= self._drain_ready()
        except StorageError as err:
            self._fail(f"storage failed, state could not be made durable: {err}")
            return
        self._moved(changed)

    def _send_rest(self, messages: list[Message]) -> None:
        """A batch's messages after its applies (``ReadyEffects.send_rest``): when the
        applies answered writers, sent in a later callback, behind the writers' tasks (the
        commit index told to the followers does not hold their answers up)."""
        if self._answered:
            asyncio.get_running_loop().call_soon(self._send_all, messages)
        else:
            self._send_all(messages)

    def _send_all(self, messages: list[Message]) -> None:
        for m in messages:
            self._send(m)

    def _persist(self, rd: Ready) -> None:
        """The synchronous write of a whole ready batch (``ReadyEffects.persist``, for
        ``raft/ready.py``'s ``handle_ready``); the pump writes in the writer thread instead."""
        if rd.snapshot is not None:
            self._save_snapshot(rd.snapshot)
        if rd.entries or rd.hard_state is not None:
            assert self.storage is not None
            self.storage.save(rd.hard_state, rd.entries)

    def _restore(self, snap: Snapshot) -> None:
        self.state.restore(snap.data, snap.meta.index)
        log.info("installed a snapshot at index %d", snap.meta.index)

    def _after_advance(self) -> None:
        self.reads.serve(self.state.index)
        assert self.raw is not None and self.storage is not None
        self._compaction.maybe_start(self.raw, self.storage)

    def _apply(self, e: Entry) -> None:
        # Never raises for what an entry holds (state.py): an entry the state cannot apply is
        # a recorded no-op with an error result, which its proposer (if any) gets below.
        res = self.state.apply_entry(e)
        if res.error is not None and (res.status == 400 or res.status >= 500):
            log.warning(
                "entry %d (%s) applied as a no-op: %s; data %s",
                e.index,
                e.type.name.lower(),
                res.error.get("message"),
                shown(e.data),
            )
        if e.type is EntryType.CONF_CHANGE and res.ok:
            cc = ConfChange.decode(e.data)  # the state decoded it: it decodes
            what = cc.type.name.lower()
            fields = {"event": "membership", "change": what, "member": cc.node_id, "index": e.index}
            extra = {"fields": fields}
            log.info("membership: %s %r (index %d)", what, cc.node_id, e.index, extra=extra)
            if cc.node_id == self.id:
                # A node may be removed and later added again under the same id (scale in,
                # then out): replaying the log it meets its old removal first. Only the last
                # word counts, and run.py's _wait_removed acts on it once the log has settled.
                was_removed = self.removed
                self.removed = cc.type is ConfChangeType.REMOVE
                if self.removed:
                    self.removed_flag.set()
                else:
                    self.removed_flag.clear()
                if self.removed and not was_removed:
                    log.info("this node was removed from the group (index %d)", e.index)
                elif was_removed and not self.removed:
                    log.info("this node was added again (index %d)", e.index)
            if e.index > self._startup_commit:
                # A change while we run (this node too: a founder or a joiner may lead at
                # once); those of the log we replay at start are old.
                self._on_conf_change(cc)
        pending = self.pending.pop(e.index, None)
        if pending is not None and not pending.future.done():
            if pending.term == e.term:
                self._answered = True
                pending.resolve(res)  # its waiter's result, then its on_applied
            else:
                TELEMETRY.proposals_failed += 1
                pending.future.set_exception(
                    NoLeader("leadership changed before the write committed; it was not applied")
                )

    def _on_soft_state(self, soft: SoftState) -> None:
        lead = soft.lead
        if lead != self.last_leader:
            term = self.raw.basic_status().term if self.raw else 0
            log.info(
                "leader is now %s (term %d)%s",
                lead,
                term,
                " - this node" if lead == self.id else "",
                extra={"fields": {"event": "leader", "leader": lead, "term": term}},
            )
            self.last_leader = lead
            TELEMETRY.leader_changes += lead is not None
            if lead is not None and self.reads.ask_again(self.raw):  # sent to none, or another
                self.wake()
        if soft.state is StateType.LEADER:
            if self.leader_since is None:
                self.leader_since = time.monotonic()
                self._on_lead()
        else:
            self.leader_since = None

    def expire_reads(self) -> None:  # and ask again for those unanswered for a while
        if self.reads.expire(self.raw):
            self.wake()

    # ---- views -----------------------------------------------------------------------------
    def raft_status(self) -> BasicStatus | None:
        return self.raw.basic_status() if self.raw else None

    def is_leader(self) -> bool:
        return self.raw is not None and self.raw.is_leader

    def leader_id(self) -> str | None:
        return self.raw.lead if self.raw else None

    def in_config(self, node_id: str) -> bool:
        """Whether ``node_id`` is a voter or a learner of the Raft configuration."""
        return self.raw is not None and self.raw.basic_status().in_config(node_id)

    def write_timeout(self) -> float:
        return max(3.0, 10 * self.cfg.election_timeout_ms / 1000)

    # ---- proposals and reads ---------------------------------------------------------------
    async def propose_cmd(self, data: bytes, on_applied: OnApplied | None = None) -> Any:
        """Like ``propose``, the command queued for the next pump's one proposal; a leader
        calls ``on_applied`` with the result at the apply (node/proposals.py)."""
        raw = self.raw
        if raw is None or not raw.is_leader or self._cluster_id() is None or self._stop.is_set():
            return await self.propose(lambda raw: raw.propose(data))  # its errors
        fut = self._proposals.add(data, on_applied)
        self.wake()
        return await wait_answer(
            fut, self.pending, self._proposals, self.write_timeout(), self._deadlines
        )

    async def propose_conf(self, cc: ConfChange) -> Any:
        return await self.propose(lambda raw: raw.propose_conf_change(cc))

    async def propose(self, append: Callable[[RawNode], tuple[int, int]]) -> Any:
        """Append on the leader's log and wait until it is applied (503 if not appended)."""
        raw = self.raw
        if raw is None or self._cluster_id() is None:
            raise NoLeader("this node is not a member of a cluster yet")
        if self._stop.is_set():
            # (nothing would apply it: a handler waiting for it would hold the API's stop up)
            raise NoLeader("this node is stopping; the write was not proposed")
        try:
            term, index = append(raw)
        except ProposalDropped as exc:
            TELEMETRY.proposals_failed += 1
            raise NoLeader(f"not proposed: {exc}") from None
        return await self._wait_applied(term, index)

    async def _wait_applied(self, term: int, index: int) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[index] = _Pending(term, fut)
        self.wake()
        return await wait_answer(
            fut, self.pending, self._proposals, self.write_timeout(), self._deadlines
        )

    async def write(self, data: bytes, on_applied: OnApplied | None = None) -> dict[str, Any]:
        """Propose a state command on the leader; the caller (the API) forwards when we are
        not the leader. Returns the apply result body or raises the error."""
        res = await self.propose_cmd(data, on_applied)
        if not res.ok:
            raise StateErrorResult(res.error)
        return res.result or {}

    async def read_barrier(self) -> None:
        """Linearizable read point: ReadIndex, then wait until applied reaches it."""
        raw = self.raw
        if raw is None or self._cluster_id() is None:
            raise NoLeader("this node is not a member of a cluster yet")
        if self._stop.is_set():
            raise NoLeader("this node is stopping; the read was not served")
        if raw.lead is None:
            raise NoLeader("no leader known")
        fut = self.reads.start(raw, self.write_timeout())
        self.wake()
        await fut

    async def wait_index(self, index: int, timeout: float) -> int:
        """Wait until the state's index passes ``index`` (or the timeout); returns it."""
        if self.state.index > index or timeout <= 0:
            return self.state.index
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.state.index <= index and not self._stop.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            # Not wait_for: on Python 3.11 it makes a task at every change of the index.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._index_event.wait()
        return self.state.index
