"""Fewer, larger messages out of one ready batch: what the agent's driver sends.

The core sends as it steps: a leader appends to each follower at every proposal and again
when its commit index moves, and a follower answers every append. Under load one ready batch
thus holds several appends to the same follower (each continuing the one before), and a
follower's batch several acknowledgements to its leader. :func:`coalesce` merges them, per
destination, so that each message a peer steps stands for all of them:

- consecutive appends to one peer in one term, the later one continuing the earlier one's
  last entry (its ``index``/``log_term`` are the earlier's last entry), become one append
  of both entry lists with the later commit index, as long as the entries stay within
  ``max_entries``; it is ``COMMIT_ONLY`` (unanswered) only if both were. A follower
  reaches the same log and commit index either way: it takes the merged append if and only
  if it would have taken the first, and then the second.
- consecutive accepting append answers to one peer in one term become the later one when
  it acknowledges at least as much: an acknowledgement covers every index below it.

"Consecutive" means with no other message to that peer between them; messages to other
peers do not count (each peer has its own ordered connection). Nothing else is touched:
rejections, heartbeats, votes, snapshots and local messages go as they are, and the order
of the messages to any one peer is kept. The simulator steps the core's own messages; the
agent's driver coalesces each batch before it sends it (``node/driver.py``).
"""

from __future__ import annotations

from .types import COMMIT_ONLY, Message, MessageType

_APP = MessageType.APP
_APP_RESP = MessageType.APP_RESP
_MERGEABLE = (b"", COMMIT_ONLY)  # an append's contexts that merging may drop


def _merged(a: Message, b: Message, max_entries: int) -> Message | None:
    """``a`` and ``b`` (to the same peer, ``b`` after ``a``) as one message, or None."""
    if a.type is not b.type or a.term != b.term or a.frm != b.frm:
        return None
    if a.type is _APP:
        last_term = a.entries[-1].term if a.entries else a.log_term
        if (
            b.index != a.index + len(a.entries)
            or b.log_term != last_term
            or b.commit < a.commit
            or len(a.entries) + len(b.entries) > max_entries
            or a.context not in _MERGEABLE
            or b.context not in _MERGEABLE
        ):
            return None
        entries = a.entries + b.entries
        return Message(
            _APP,
            to=a.to,
            frm=a.frm,
            term=a.term,
            log_term=a.log_term,
            index=a.index,
            entries=entries,
            commit=b.commit,
            # unanswered only if both were (then it carries no entry either)
            context=COMMIT_ONLY if a.context == b.context == COMMIT_ONLY else b"",
        )
    if a.type is _APP_RESP:
        if a.reject or b.reject or b.index < a.index or a.context or b.context:
            return None
        return b
    return None


def coalesce(messages: list[Message], max_entries: int) -> list[Message]:
    """``messages`` with consecutive appends and acknowledgements to each peer merged (see
    the module docstring); the same list when there is nothing to merge."""
    if len(messages) < 2:
        return messages
    out: list[Message] = []
    last: dict[str, int] = {}  # peer -> position in out of its latest message
    for m in messages:
        to = m.to
        if to is not None:
            at = last.get(to)
            if at is not None and (m.type is _APP or m.type is _APP_RESP):
                merged = _merged(out[at], m, max_entries)
                if merged is not None:
                    out[at] = merged
                    continue
            last[to] = len(out)
        out.append(m)
    return out if len(out) != len(messages) else messages
