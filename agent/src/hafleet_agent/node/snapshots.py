"""Snapshots larger than one frame, the node's side of ``snapxfer.py``: the leader sends
them in chunks (``SnapshotSender``), a follower gathers the chunks (``SnapshotReceiver``)
and hands the snapshot to the core as if it had come in one Raft frame. The storage's copy
of a received snapshot is written ahead, off the loop; the driver puts it in force when the
core hands the snapshot over to be saved (``save_received``).

The transfer sees the node through what is passed in: the driver (the core and its
storage), the cluster id, the node's stop event, a task spawner, a frame sender, and the
node's own path for a Raft frame (``deliver_raft``: the same checks as any other)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..codec import encode_message
from ..raft.types import Message, Snapshot
from ..snapxfer import SnapshotReceiver, SnapshotSender
from ..transport import PeerInfo, Transport
from ..wal import RECEIVED_SUFFIX
from .driver import Driver

log = logging.getLogger("hafleet.agent")


class SnapshotTransfer:
    def __init__(
        self,
        node_id: str,
        data_dir: Path,
        driver: Driver,
        *,
        cluster_id: Callable[[], str | None],
        stopping: asyncio.Event,
        spawn: Callable[..., None],
        send: Callable[..., bool],
        deliver_raft: Callable[[PeerInfo, object, object], None],
    ) -> None:
        self.id = node_id
        self.data_dir = data_dir
        self.driver = driver
        self._cluster_id = cluster_id
        self._stop = stopping
        self._spawn = spawn
        self._send = send
        self._deliver_raft = deliver_raft
        # Made by start() (they need the transport and the storage).
        self.sender: SnapshotSender | None = None
        self.receiver: SnapshotReceiver | None = None
        # a snapshot received in chunks and the storage's copy of it, written ahead
        self._received_prepared: tuple[Snapshot, Path] | None = None

    def start(self, transport: Transport) -> None:
        driver = self.driver

        def still_leader(to: str, term: int) -> bool:
            st = driver.raw.basic_status() if driver.raw is not None else None
            return (
                st is not None
                and st.is_leader
                and st.term == term
                and st.in_config(to)
                and not self._stop.is_set()
            )

        def report_failure(to: str) -> None:
            if driver.raw is not None:
                driver.raw.report_snapshot(to, False)
                driver.wake()

        def reply(addr: str, body: dict[str, Any]) -> None:
            self._send(addr, body.pop("k"), **body)

        self.sender = SnapshotSender(
            transport=transport,
            cluster_id=self._cluster_id,
            spawn=self._spawn,
            still_leader=still_leader,
            report_failure=report_failure,
        )
        storage = driver.storage
        assert storage is not None
        self.receiver = SnapshotReceiver(
            node_id=self.id,
            data_dir=self.data_dir,
            deliver=self._deliver,
            reply=reply,
            spawn=self._spawn,
            prepare=lambda snap: storage.prepare_snapshot(snap, RECEIVED_SUFFIX),
        )

    def busy(self) -> bool:
        """A member catches up through a chunked snapshot."""
        return self.sender is not None and self.sender.busy()

    def on_chunk(self, peer: PeerInfo, obj: dict[Any, Any]) -> None:
        # Chunks only from our own cluster: a node adopts its cluster id from the Raft
        # messages that always come before a snapshot (the leader probes first).
        cluster_id = self._cluster_id()
        if self.receiver is None or cluster_id is None:
            return
        if obj.get("cid") != cluster_id:
            log.debug("snapshot chunk of cluster %r from %s: dropped", obj.get("cid"), peer.node_id)
            return
        self.receiver.on_chunk(peer, obj)

    def on_ack(self, peer: PeerInfo, obj: dict[Any, Any]) -> None:
        if self.sender is not None and obj.get("cid") == self._cluster_id():
            self.sender.on_ack(peer.node_id, obj)

    def _deliver(self, peer: PeerInfo, m: Message, prepared: Path | None) -> None:
        """A snapshot received in chunks, checksum verified: the core gets it as if it had
        come in one Raft frame, through the same checks (sender, cluster, term bounds).
        ``prepared``: the storage's copy of it, already written (off the loop); the driver
        puts it in force when the core hands the snapshot over to be saved."""
        storage, raw = self.driver.storage, self.driver.raw
        assert storage is not None and raw is not None and m.snapshot is not None
        old, self._received_prepared = self._received_prepared, None
        if old is not None and old[1] != prepared:  # one file per index and term
            storage.discard_prepared_snapshot(old[1])
        self._deliver_raft(peer, self._cluster_id(), encode_message(m))
        pending = raw.pending_snapshot_meta()
        if prepared is not None:
            if pending is not None and pending == m.snapshot.meta:
                self._received_prepared = (m.snapshot, prepared)
            else:  # the core did not take it (stale, or refused): nothing to install
                storage.discard_prepared_snapshot(prepared)

    def save_received(self, snap: Snapshot) -> None:
        """Make a snapshot from the leader durable (in the ready loop, before anything that
        depends on it): by renaming the copy written ahead when it is the one prepared."""
        storage = self.driver.storage
        assert storage is not None
        prep, self._received_prepared = self._received_prepared, None
        if (
            prep is not None
            and prep[0].meta == snap.meta
            and prep[0].data == snap.data
            and prep[1].exists()
        ):
            storage.install_prepared_snapshot(snap, prep[1])
            log.debug("snapshot %d: the copy written ahead is in force", snap.meta.index)
            return
        if prep is not None:
            storage.discard_prepared_snapshot(prep[1])
        storage.save_snapshot(snap)
