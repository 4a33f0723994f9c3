"""The API's tokens and its audit log: who may do what, and a line for each write.

Two tokens (docs/security.md, "Tokens and audit"): the admin token (``--token-file``) may call
every route; the read token (``--read-token-file``, optional) may call the reads (GET, HEAD)
and gets 403 on every write. :func:`scope_of` says which one a request presented, comparing
in constant time against both.

The audit log is the logger ``hafleet.audit``:

* every write the API answers (PUT, POST, DELETE with a valid token) is one INFO line, in
  logfmt: ``write scope=admin source=10.0.0.5 method=PUT path=/v1/kv/a key=a status=200``
  (``forwarded_by=ID`` when a follower forwarded it; ``status=none`` when no answer was sent),
  stamped with the time of the answer and written in batches, at most BOOK_AFTER_S (50 ms) or
  BOOK_MAX lines after it (api.py: a line written alone, at each answer, found the logging
  code cold); an agent that stops writes its batch first, a kill -9 loses at most that much;
* a refused token (401, or 403 for the read token writing) is a WARNING line in the same form
  (``refused ... status=401 reason="wrong API token"``), at most one per source address per
  REFUSED_LOG_INTERVAL_S: the next one says how many were not logged. Anyone can send these.

Reads are not logged (the Prometheus counters count them). Tokens are never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any

from ..config import ConfigError, read_secret
from ..throttle import WarnThrottle
from . import web

audit_log = logging.getLogger("hafleet.audit")

ADMIN, READ, NONE = "admin", "read", "none"
#: The methods the read token may use.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: A refused token costs at most one log line per source address per this long.
REFUSED_LOG_INTERVAL_S = 10.0
#: The request's scope, set by the middleware (``request[SCOPE]``), and what a write is about
#: when its path does not say it (``request[WHAT] = ("member", id)``).
SCOPE: Any = web.RequestKey("hafleet_scope", str)
WHAT: Any = web.RequestKey("hafleet_audit_what", tuple)
FORWARDED = "X-Hafleet-Forwarded"  # forward.py's header (the sender's node id), as claimed

_PLAIN = re.compile(r"^[A-Za-z0-9._/:%@\[\]+-]{1,200}$")
_MAX_VALUE = 200


def load_read_token(cfg: Any, admin: bytes) -> bytes | None:
    """The read token of ``cfg.read_token_file`` (the token file rules: mode 0600, at least
    32 characters), or None when none is configured. It must differ from the admin token."""
    path = getattr(cfg, "read_token_file", "") or ""
    if not path:
        return None
    token = read_secret(path, "read token")
    if hmac.compare_digest(token, admin):
        raise ConfigError(
            f"the read token in {path} is the admin token (--token-file): give it a token "
            "of its own (e.g. openssl rand -hex 32)"
        )
    return token


def scope_of(presented: bytes, admin: bytes, read: bytes | None) -> str:
    """ADMIN, READ or NONE; both comparisons are made, in constant time, whatever the first
    one found."""
    is_admin = hmac.compare_digest(presented, admin)
    is_read = read is not None and hmac.compare_digest(presented, read)
    return ADMIN if is_admin else READ if is_read else NONE


def value(text: object) -> str:
    """A logfmt value: as it is when plain, else JSON-quoted (no raw control character, no
    space or quote that would split the line); cut to _MAX_VALUE characters."""
    s = str(text)
    if len(s) > _MAX_VALUE:
        s = s[: _MAX_VALUE - 3] + "..."
    return s if _PLAIN.match(s) else json.dumps(s)


class Audit:
    """The API's audit lines (see the module's docstring)."""

    def __init__(self, logger: logging.Logger = audit_log) -> None:
        self.log = logger
        self.refusals = WarnThrottle(logger, REFUSED_LOG_INTERVAL_S)
        self.writes = 0
        self.refused = 0

    @staticmethod
    def _fields(record: dict[str, str]) -> str:
        return " ".join(f"{k}={value(v)}" for k, v in record.items())

    def _record(self, request: Any, status: int | None) -> dict[str, str]:
        """The line's fields in order, as text: the logfmt line's, and the JSON log's
        structured fields (cut to _MAX_VALUE characters)."""
        out = {"scope": str(request.get(SCOPE, NONE)), "source": str(request.remote or "unknown")}
        forwarded = request.headers.get(FORWARDED)
        if forwarded:
            out["forwarded_by"] = str(forwarded)
        out["method"], out["path"] = str(request.method), str(request.raw_path)
        what = request.get(WHAT)
        if what is None:
            info = getattr(request, "match_info", None) or {}
            if "key" in info:
                what = ("key", info["key"])
            elif "id" in info:
                what = ("member", info["id"])
        if what is not None:
            out[str(what[0])] = str(what[1])
        out["status"] = str(status) if status is not None else "none"
        return {k: v[:_MAX_VALUE] for k, v in out.items()}

    def answered(self, request: web.Request, status: int | None, error: str = "") -> None:
        """After the API answered ``request`` with ``status`` (None: no answer was sent)."""
        if status in (401, 403):
            self.refused += 1
            source = request.remote or "unknown"
            record = self._record(request, status)
            line = f"refused {self._fields(record)} reason={value(error or '?')}"
            fields = {"event": "refused", **record, "reason": error or "?"}
            self.refusals.warn(source, "%s", line, fields=fields)  # at most 1 a source a 10 s
        else:
            record = self.write_record(request, status)
            if record is not None:
                self.write_line(record)

    def write_record(self, request: web.Request, status: int | None) -> dict[str, str] | None:
        """The fields of the line of a write answered with ``status`` (counted now; written
        by :meth:`write_line`), None for a read (no line)."""
        if request.method in READ_METHODS:
            return None
        self.writes += 1
        return self._record(request, status)

    def write_line(self, record: dict[str, str], at: float | None = None) -> None:
        """Write a write's line; ``at``: when it was answered (``time.time()``), the line's
        time, when it is written later (the API writes them in batches: api.py,
        BOOK_AFTER_S)."""
        if not self.log.isEnabledFor(logging.INFO):
            return
        fields = {"event": "write", **record}
        line = self.log.makeRecord(
            self.log.name,
            logging.INFO,
            __file__,
            0,
            "write %s",
            (self._fields(record),),
            None,
            "write_line",
            {"fields": fields},
        )
        if at is not None:
            line.created, line.msecs = at, int((at - int(at)) * 1000) + 0.0
        self.log.handle(line)
