"""The errors of the agents' wire format (:mod:`hafleet_agent.wire`,
:mod:`hafleet_agent.payload`): each one means the connection must close."""

from __future__ import annotations

__all__ = ["AuthError", "Closed", "ProtocolError"]


class Closed(Exception):
    """The connection must close; the message is the reason that gets logged.

    Raised as this class itself (not a subclass) only when the peer ended the stream
    cleanly between frames."""


class AuthError(Closed):
    """A proof, tag or counter that does not check out (or a peer that is not hafleet/v1)."""


class ProtocolError(Closed):
    """Oversize or truncated frames, undecodable payloads, malformed hellos."""
