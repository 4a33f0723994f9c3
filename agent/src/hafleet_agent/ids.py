"""Member ids: the one grammar, checked wherever an id enters the agent.

A member id (``--node-id``, ``POST /v1/members``, ``DELETE /v1/members/{id}``, a leadership
transfer's ``to``, the ids in join and founding frames, the node id of a configuration
change) is 1-63 characters of ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a
letter or a digit (shared/DESIGN.md)::

    ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$

The alphabet keeps an id safe everywhere it travels: a log line, a DNS label, an HAProxy
server name, a URL path segment, a file name. The API client repeats the pattern
(:mod:`hafleet_agent.apiclient`, ``MEMBER_ID_RE``: it is vendored into the collection, whose
modules cannot import the agent, and stays standard-library only); a change here must be
made there too (then ``make vendor``). A test checks that the two agree.
"""

from __future__ import annotations

import re
import unicodedata

MEMBER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
"""The grammar as written in the docs. Match with :data:`MEMBER_ID_RE` ``.fullmatch`` (a
``$`` alone would also accept a trailing newline)."""

MEMBER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""Use ``MEMBER_ID_RE.fullmatch(text)``."""

MAX_MEMBER_ID_CHARS = 63

NODE_URI_PREFIX = "hafleet://node/"
"""A node certificate's URI subjectAltName: this prefix and the node id (``hafleet-agent ca
issue`` writes it, :func:`hafleet_agent.tls.peer_node_id` reads it)."""

MEMBER_ID_RULE = (
    "a member id is 1-63 characters of letters, digits, '.', '_' and '-', starting with "
    f"a letter or digit ({MEMBER_ID_PATTERN})"
)
"""What every refusal says."""

_SHOWN_CHARS = 80


def is_control(ch: str) -> bool:
    """Whether ``ch`` is a character a terminal or a page would act on rather than show:
    a control character, a format character (bidi overrides such as U+202E, zero-width ones),
    a line or paragraph separator."""
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def has_control(text: str) -> bool:
    """Whether ``text`` holds a character :func:`is_control` names."""
    return any(is_control(c) for c in text)


def valid_member_id(value: object) -> bool:
    """True when ``value`` is a str that follows the grammar."""
    return isinstance(value, str) and MEMBER_ID_RE.fullmatch(value) is not None


def shown(value: object, limit: int = _SHOWN_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters: safe for a log line or an error body
    (no raw newline or control character, and bounded whatever the input)."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ cannot come from JSON or msgpack, but be safe
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def member_id_error(value: object, what: str = "member id") -> str | None:
    """None when ``value`` is a valid member id, else the reason (the value shown with
    :func:`shown`, and the rule)."""
    if valid_member_id(value):
        return None
    if not isinstance(value, str):
        return f"{what} must be a string, got {type(value).__name__}: {MEMBER_ID_RULE}"
    return f"{what} {shown(value)} is not valid: {MEMBER_ID_RULE}"


def check_member_id(value: object, what: str = "member id") -> str:
    """Return ``value`` if it is a valid member id; raise ``ValueError`` saying the rule."""
    error = member_id_error(value, what)
    if error is not None:
        raise ValueError(error)
    assert isinstance(value, str)
    return value
